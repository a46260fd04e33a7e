"""Preference pairs for DPO: a prompt, a chosen (better) and a rejected (worse) answer.

Read like SFT's rows (``data.prepare`` with ``PAIR_ROWS``: the same sources, ``data.columns`` mapping, splits and
per-reason counts of dropped rows). Two forms are recognised:

- text: ``prompt``, ``chosen`` and ``rejected`` strings (an optional ``system`` string);
- conversational: ``chosen`` and ``rejected`` as message lists that share their prompt (the turns before the last,
  e.g. Anthropic HH), or that hold only the answer beside a ``prompt`` (a string or a message list).

Every usable pair becomes ``{"prompt": [messages], "chosen": [assistant], "rejected": [assistant]}``: trl's
conversational preference form, which DPOTrainer renders with the chat template. A pair is dropped, with its reason,
when a field is missing or empty, when both answers are the same, or (once tokenised) when its prompt alone fills
``training.max_length`` (no answer token would be left; trl drops those too). Longer pairs are truncated.
"""

from __future__ import annotations

from typing import Any

from phi3space.config import DataConfig
from phi3space.engine import data as data_mod
from phi3space.engine.tokens import set_token_stats
from phi3space.errors import DataError

ROLES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user", "gpt": "assistant"}


def detect_pair_format(columns) -> str:
    """'preference' when the columns hold chosen and rejected answers.

    Raises:
        DataError: no chosen/rejected columns (the message lists the columns and how to map them).
    """
    cols = set(columns)
    if {"chosen", "rejected"} <= cols:
        return "preference"
    raise DataError(f"training.objective dpo needs preference pairs: chosen and rejected columns (found: "
                    f"{', '.join(sorted(cols)) or 'none'})",
                    "Map yours with data.columns, e.g. {prompt: question, chosen: better, rejected: worse}; or set "
                    "training.objective: sft for conversations or prompt/completion data.")


def _messages(value: Any, what: str) -> tuple[list | None, str]:
    """A message list (role/content or from/value), cleaned; or None and why not."""
    if value is None or value == []:
        return None, f"empty {what}"
    if not isinstance(value, list):
        return None, f"non-text {what}"
    out = []
    for m in value:
        if not isinstance(m, dict):
            return None, f"{what}: a message is not an object"
        role = ROLES.get(str(m.get("role", m.get("from", ""))).lower())
        content = m.get("content", m.get("value"))
        if role is None:
            return None, f"{what}: unknown role {m.get('role', m.get('from'))!r}"
        if not isinstance(content, str):
            return None, f"non-text {what}"
        if not content.strip():
            return None, f"empty {what}"
        out.append({"role": role, "content": content})
    return out, ""


def _prompt(value: Any, system: Any) -> tuple[list | None, str]:
    if isinstance(value, str):
        if not value.strip():
            return None, "empty prompt"
        head = [{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else []
        return head + [{"role": "user", "content": value}], ""
    if value is None:
        return None, "empty prompt"
    msgs, why = _messages(value, "prompt")
    if msgs is not None and msgs[-1]["role"] == "assistant":
        return None, "prompt ends on an assistant turn"
    return msgs, why


def _answer(value: Any, what: str) -> tuple[list | None, list | None, str]:
    """(the turns before the answer, the answer as one assistant message), or Nones and why not."""
    if isinstance(value, str):
        return [], [{"role": "assistant", "content": value}], "" if value.strip() else f"empty {what} answer"
    msgs, why = _messages(value, f"{what} answer")
    if msgs is None:
        return None, None, why
    if msgs[-1]["role"] != "assistant":
        return None, None, f"{what} answer is not an assistant turn"
    return msgs[:-1], msgs[-1:], ""


def normalise_pair(row: dict, fmt: str = "preference") -> tuple[dict | None, str]:
    """One row -> ``{"prompt", "chosen", "rejected"}`` (message lists), or None and the reason it cannot be used."""
    chosen_ctx, chosen, why = _answer(row.get("chosen"), "chosen")
    if chosen is None or why:
        return None, why
    rejected_ctx, rejected, why = _answer(row.get("rejected"), "rejected")
    if rejected is None or why:
        return None, why
    if chosen_ctx != rejected_ctx:
        return None, "chosen and rejected do not share a prompt"
    if chosen_ctx:  # the prompt is in the conversations (a prompt column beside them only repeats it)
        prompt = chosen_ctx
        if prompt[-1]["role"] == "assistant":
            return None, "prompt ends on an assistant turn"
    else:
        prompt, why = _prompt(row.get("prompt"), row.get("system"))
        if prompt is None:
            return None, why or "empty prompt"
    if chosen[0]["content"].strip() == rejected[0]["content"].strip():
        return None, "identical answers"
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}, ""


PAIR_ROWS = data_mod.RowKind(detect_pair_format, normalise_pair,
                             "Each pair needs a prompt and two different, non-empty answers (chosen and rejected). "
                             "Map other column names with data.columns, e.g. "
                             "{prompt: question, chosen: better, rejected: worse}.")


# ---------------------------------------------------------------- lengths

def pair_lengths(pairs: list[dict], tokenizer) -> list[tuple[int, int]]:
    """(prompt tokens, tokens of the prompt with its longer answer) for each pair, as the chat template renders
    them for DPOTrainer."""
    if not pairs:
        return []
    prompts = tokenizer.apply_chat_template([p["prompt"] for p in pairs], tokenize=True, add_generation_prompt=True,
                                            return_dict=True)["input_ids"]
    out = [[len(ids), 0] for ids in prompts]
    for side in ("chosen", "rejected"):
        full = tokenizer.apply_chat_template([p["prompt"] + p[side] for p in pairs], tokenize=True,
                                             return_dict=True)["input_ids"]
        for row, ids in zip(out, full):
            row[1] = max(row[1], len(ids))
    return [tuple(row) for row in out]


def _measure(ds, tokenizer, limit: int | None = None) -> list[tuple[int, int]]:
    rows = ds if limit is None else ds.select(range(min(limit, len(ds))))
    out = []
    for start in range(0, len(rows), 500):
        out += pair_lengths(list(rows.select(range(start, min(start + 500, len(rows))))), tokenizer)
    return out


def _drop_full_prompts(ds, lengths: list[tuple[int, int]], max_length: int):
    keep = [i for i, (prompt, _) in enumerate(lengths) if prompt < max_length]
    return ds if len(keep) == len(ds) else ds.select(keep)


def _account(report, lengths: list[tuple[int, int]], max_length: int, keep_lengths: bool) -> int:
    """Token statistics on the pairs' whole lengths, and the pairs whose prompt fills max_length counted as
    dropped; returns how many."""
    full = sum(prompt >= max_length for prompt, _ in lengths)
    set_token_stats(report, sorted(total for _, total in lengths), max_length, keep_lengths)
    if full:
        report.dropped[f"prompt alone fills max_length {max_length}"] = full
        report.kept -= full
    return full


def prepare_pairs(data: DataConfig, base: str, max_length: int, seed: int = 42, token: str | None = None,
                  sample: int | None = data_mod.SAMPLE_ROWS) -> data_mod.Prepared:
    """Pairs read, normalised, split and measured: what ``inspect`` shows (``sample``: the first rows only; token
    lengths on at most 2,000 of them) and, with ``sample=None``, what DPO trains on (every pair measured; those
    whose prompt fills ``max_length`` dropped).

    Raises:
        DataError: not preference data, or no usable pair.
    """
    from phi3space.engine.modeling import load_tokenizer

    train_ds, eval_ds, report = data_mod.prepare(data, seed, token, sample=sample, kind=PAIR_ROWS)
    report.format = "preference pairs"
    tokenizer = load_tokenizer(base, token)
    lengths = _measure(train_ds, tokenizer, 2000 if sample is not None else None)
    full = _account(report, lengths, max_length, keep_lengths=sample is not None)
    if full == len(lengths):
        raise DataError(f"no pair of {data.dataset} leaves room for an answer within training.max_length "
                        f"{max_length}: the prompts alone fill it", "Raise training.max_length.")
    if sample is None:
        train_ds = _drop_full_prompts(train_ds, lengths, max_length)
        if eval_ds is not None:
            eval_ds = _drop_full_prompts(eval_ds, _measure(eval_ds, tokenizer), max_length)
            eval_ds = eval_ds if len(eval_ds) else None
        report.train_rows, report.eval_rows = len(train_ds), len(eval_ds) if eval_ds is not None else 0
    elif full:  # the example shown must be one that trains
        train_ds = _drop_full_prompts(train_ds.select(range(len(lengths))), lengths, max_length)
    return data_mod.Prepared(train_ds, eval_ds, report, tokenizer)


def render_pair(pair: dict, tokenizer) -> list[tuple[str, str | None]]:
    """One pair as (text, label) segments: the prompt as the chat template renders it, then each answer."""
    prompt = tokenizer.apply_chat_template(pair["prompt"], tokenize=False, add_generation_prompt=True)
    return [(prompt, None), ("\nchosen: ", None), (pair["chosen"][0]["content"], "chosen"),
            ("\nrejected: ", None), (pair["rejected"][0]["content"], "rejected")]


def render_pair_text(pair: dict, tokenizer) -> str:
    """One pair for the CLI: the rendered prompt, then the chosen and the rejected answer."""
    prompt = tokenizer.apply_chat_template(pair["prompt"], tokenize=False, add_generation_prompt=True)
    return f"{prompt}\n  chosen:   {pair['chosen'][0]['content']}\n  rejected: {pair['rejected'][0]['content']}"
