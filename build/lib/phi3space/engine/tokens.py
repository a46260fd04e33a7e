"""Token ids and the trained mask of normalised rows, as trl's SFTTrainer computes them (its Phi-3 training template
with ``{% generation %}`` markers: loss on assistant turns only), for whole splits (batched, into Arrow, in parallel
for large ones), for Inspect's token statistics, and rendered for a person to read."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

# A split of at least this many rows is tokenised by several processes, one for each core this process may use
# (shared between data-parallel ranks), at most TOKENIZE_MAX_PROCS. Below it, starting them costs more than it saves.
TOKENIZE_PARALLEL_ROWS = 20_000
TOKENIZE_MAX_PROCS = 8


def training_template(tokenizer) -> str:
    """The chat template with ``{% generation %}`` markers that trl uses for assistant-only loss."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(tokenizer.chat_template):
        return tokenizer.chat_template
    return get_training_chat_template(tokenizer)


def tokenize_example(item: dict, tokenizer, template: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids of one normalised row and its mask of trained tokens (1 = in the loss), as trl computes them.
    ``template``: the training template, when the caller has it already."""
    if "text" in item:
        ids = tokenizer(item["text"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        return ids, [1] * len(ids)
    enc = tokenizer.apply_chat_template(item["messages"], chat_template=template or training_template(tokenizer),
                                        tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    return list(enc["input_ids"]), list(enc["assistant_masks"])


def tokenize_batch(items: list[dict], tokenizer, template: str | None) -> list[tuple[list[int], list[int]]]:
    """``tokenize_example`` for many rows at once (one call to the tokenizer: twice as fast)."""
    if not items:
        return []
    if "text" in items[0]:
        encoded = tokenizer([item["text"] + tokenizer.eos_token for item in items], add_special_tokens=False)["input_ids"]
        return [(ids, [1] * len(ids)) for ids in encoded]
    enc = tokenizer.apply_chat_template([item["messages"] for item in items], chat_template=template, tokenize=True,
                                        return_dict=True, return_assistant_tokens_mask=True)
    return [(list(ids), list(mask)) for ids, mask in zip(enc["input_ids"], enc["assistant_masks"])]


def tokenize(ds, tokenizer, max_length: int):
    """Every row's token ids and labels (-100 outside the trained spans), cut at ``max_length``, with its whole
    length in ``tokens`` and its trained ``length`` (0 when no trained token is left within ``max_length``: see
    ``drop_untrained``). Batched, into Arrow files (bounded memory); trl's SFTTrainer then takes the ids as they are
    instead of tokenising again."""
    template = training_template(tokenizer) if "messages" in ds.column_names else None

    def rows(batch: dict) -> dict:
        out: dict[str, list] = {"input_ids": [], "labels": [], "length": [], "tokens": []}
        key = "messages" if template else "text"
        for ids, mask in tokenize_batch([{key: value} for value in batch[key]], tokenizer, template):
            labels = [i if m else -100 for i, m in zip(ids[:max_length], mask[:max_length])]
            out["input_ids"].append(ids[:max_length])
            out["labels"].append(labels)
            out["length"].append(len(labels) if any(label != -100 for label in labels[1:]) else 0)
            out["tokens"].append(len(ids))
        return out

    return ds.map(rows, batched=True, remove_columns=ds.column_names, new_fingerprint=f"tokens-{uuid.uuid4().hex}",
                  desc="Tokenising", num_proc=_tokenize_procs(len(ds)))


def _tokenize_procs(rows: int) -> int | None:
    """Processes to tokenise ``rows`` with (None: this one)."""
    import os

    if rows < TOKENIZE_PARALLEL_ROWS:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    procs = min(TOKENIZE_MAX_PROCS, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    return procs if procs > 1 else None


def drop_untrained(ds):
    """The rows with something to learn within max_length (trl drops the others too)."""
    if 0 not in ds.unique("length"):
        return ds
    return ds.filter(lambda lengths: [n > 0 for n in lengths], input_columns="length", batched=True,
                     new_fingerprint=f"trained-{uuid.uuid4().hex}")


def set_token_stats(report: Any, lengths: list[int], max_length: int, keep_lengths: bool = True) -> None:
    """Token-length percentiles and the share of rows over ``max_length``, from sorted ``lengths``."""
    if not lengths:
        return
    pick = lambda q: lengths[min(len(lengths) - 1, int(q * len(lengths)))]  # noqa: E731
    report.token_percentiles = {"min": lengths[0], "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": lengths[-1]}
    report.over_max_length = sum(n > max_length for n in lengths) / len(lengths)
    report.max_length = max_length
    if keep_lengths:
        report.lengths = lengths


def add_token_stats(report: Any, rows: Iterable[dict], tokenizer, max_length: int, limit: int = 2000) -> None:
    """Fill token-length percentiles and the share of rows over ``max_length`` (on at most ``limit`` rows)."""
    sample = [r for _, r in zip(range(limit), rows)]
    template = training_template(tokenizer) if sample and "messages" in sample[0] else None
    lengths = [len(ids) for start in range(0, len(sample), 500)
               for ids, _ in tokenize_batch(sample[start:start + 500], tokenizer, template)]
    set_token_stats(report, sorted(lengths), max_length)


def render_segments(item: dict, tokenizer) -> list[tuple[str, bool]]:
    """One row rendered with the chat template, as (text, trained) segments."""
    ids, mask = tokenize_example(item, tokenizer)
    segments: list[tuple[str, bool]] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            segments.append((tokenizer.decode(ids[start:i], skip_special_tokens=False), bool(mask[start])))
            start = i
    return segments


def render_marked(item: dict, tokenizer, open_mark: str = "[[", close_mark: str = "]]") -> str:
    """Rendered row with the trained spans wrapped in markers (for the CLI)."""
    return "".join(f"{open_mark}{t}{close_mark}" if trained else t for t, trained in render_segments(item, tokenizer))
