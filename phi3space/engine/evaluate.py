"""Measure an adapter against its base model on held-out rows: the same prompts, greedy replies from both (the
adapter switched off for the base, the same settings), scored against the reference answer (phi3space.engine.metrics),
the loss on the reference's assistant tokens, and whether each reply ended with ``<|end|>`` rather than the length cap.

``python -m phi3space eval RUN`` runs this, and so does the web page's "Evaluate" job (with ``--run-dir``, where its
events go: run_started, per example a progress event (with ETA) and an ``example`` event, the ``evaluation`` event
with both summaries, then run_finished; on error, error then run_finished). When the adapter is on the Hub, its card
gets the adapter's scores as ``model-index`` results (phi3space.hub.model_index).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from phi3space.engine.metrics import SCORES
from phi3space.errors import DataError
from phi3space.generation import GenerationSettings
from phi3space.report import fmt_duration
from phi3space.run import EventWriter, RunDir

DEFAULT_ROWS = 50
END = "<|end|>"


@dataclass
class Row:
    """One held-out chat row to evaluate on: the prompt, the reference answer and the whole row."""

    prompt: list[dict]  # the messages before the last assistant turn
    reference: str  # the last assistant turn
    messages: list[dict]  # the whole row (for the loss on its assistant tokens)


def _rows_of(ds, limit: int) -> list[Row]:
    found = []
    for item in ds:
        messages = item.get("messages")
        if not messages or messages[-1].get("role") != "assistant":
            continue  # plain text rows have no reference answer
        found.append(Row(messages[:-1], messages[-1]["content"], messages))
        if len(found) >= limit:
            break
    return found


def load_eval_rows(adapter_dir: Path, data: str | None, rows: int, token: str | None) -> tuple[list[Row], str]:
    """Up to ``rows`` chat rows: the run's eval rows (its saved config's data, split as training split it), or every
    row of ``data`` (anything ``train`` takes as data.dataset, its train split). Returns them and the dataset's name.

    Raises:
        DataError: no such data, the run held out no eval rows, or no row ends with an assistant answer.
    """
    from phi3space import config
    from phi3space.engine.data import prepare

    if data:
        cfg = config.from_dict({"data": {"dataset": data, "eval_fraction": 0, "max_samples": rows}})
        ds, _, _ = prepare(cfg.data, token=token)
        name = data
    else:
        run = RunDir(adapter_dir)
        if not run.config.exists():
            raise DataError(f"{adapter_dir} has no run config to find its eval rows in",
                            "Name the rows to evaluate on with --data DATASET (a file or a Hub dataset).")
        cfg = config.load(run.config)
        _, ds, _ = prepare(cfg.data, cfg.training.seed, token)
        if ds is None:
            raise DataError(f"the run held out no eval rows (data.eval_fraction {cfg.data.eval_fraction:g}, no eval_split)",
                            "Name the rows to evaluate on with --data DATASET (a file or a Hub dataset).")
        name = cfg.data.dataset
    found = _rows_of(ds, rows)
    if not found:
        raise DataError(f"no row of {name} ends with an assistant answer to compare with",
                        "Evaluate on chat or prompt/completion rows (plain text rows have no reference answer).")
    return found, name


def _loss(model, ids: list[int], mask: list[int]) -> tuple[float, int]:
    """Summed cross-entropy over the trained (assistant) tokens, and their number (transformers' causal-LM loss,
    the mean over those tokens, times their number)."""
    import torch

    device = next(model.parameters()).device
    labels = [i if m else -100 for i, m in zip(ids, mask)]
    n = sum(1 for label in labels[1:] if label != -100)  # the loss predicts each token from the ones before it
    if not n:
        return 0.0, 0
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids], device=device), labels=torch.tensor([labels], device=device)).loss
    return float(loss) * n, n


def greedy_reply(model, tokenizer, prompt: list[dict], settings: GenerationSettings, stop: list[int]) -> tuple[str, bool]:
    """The greedy reply to ``prompt`` and whether it ended with <|end|> (not the length cap)."""
    import torch

    enc = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        return_tensors="pt").to(next(model.parameters()).device)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=settings.max_new_tokens, eos_token_id=stop,
                             pad_token_id=tokenizer.pad_token_id, **settings.generate_kwargs())
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    end = tokenizer.convert_tokens_to_ids(END)
    return tokenizer.decode(new, skip_special_tokens=True).strip(), bool(new) and new[-1] == end


def summarise(examples: list[dict], side: str) -> dict:
    """One side's overall scores: the mean of each score and of ended_with_end over the rows, and the loss over all
    their assistant tokens together."""
    n = len(examples) or 1
    out = {k: sum(e[side][k] for e in examples) / n for k in SCORES}
    tokens = sum(e[side]["tokens"] for e in examples)
    out["loss"] = sum(e[side]["loss"] * e[side]["tokens"] for e in examples) / tokens if tokens else None
    out["ended_with_end"] = sum(e[side]["ended_with_end"] for e in examples) / n
    return out


def evaluate(adapter: str, writer: EventWriter, data: str | None = None, rows: int = DEFAULT_ROWS,
             token: str | None = None, settings: GenerationSettings | None = None, update_card: bool = True) -> dict:
    """Evaluate ``adapter`` (a run folder or Hub repo) against its base on ``rows`` rows; returns
    {rows, dataset, base: {...}, adapter: {...}} (scores in [0, 1], loss per assistant token).

    Raises:
        DataError / ModelError / HubError: as the rows, the models and the Hub report them; in the events too.
    """
    from phi3space.engine.adapters import _does_not_fit, adapter_base, resolve_adapter, tokenizer_source
    from phi3space.engine.metrics import scores
    from phi3space.engine.modeling import load_for_inference, load_tokenizer, stop_token_ids
    from phi3space.engine.tokens import tokenize_example, training_template

    settings = settings or GenerationSettings()
    examples: list[dict] = []
    with writer.stages("eval", adapter=str(adapter)) as stage:
        path = resolve_adapter(str(adapter), token)
        base = adapter_base(path)
        found, dataset = load_eval_rows(path, data, rows, token)
        stage.total = len(found)
        stage.at(0, f"loading {base} and the adapter")
        from peft import PeftModel

        tokenizer = load_tokenizer(tokenizer_source(path, base), token)
        try:
            model = PeftModel.from_pretrained(load_for_inference(base, token, purpose="evaluation"), str(path)).eval()
        except (RuntimeError, ValueError, KeyError) as exc:
            raise _does_not_fit(str(adapter), base, path, exc) from None
        template, stop, started = training_template(tokenizer), stop_token_ids(tokenizer), time.time()
        for i, row in enumerate(found, 1):
            ids, mask = tokenize_example({"messages": row.messages}, tokenizer, template)
            example = {"index": i, "prompt": row.prompt[-1]["content"], "reference": row.reference}
            for side in ("base", "adapter"):
                with model.disable_adapter() if side == "base" else nullcontext():
                    reply, ended = greedy_reply(model, tokenizer, row.prompt, settings, stop)
                    loss, n = _loss(model, ids, mask)
                example[side] = {"reply": reply, **scores(reply, row.reference), "loss": loss / n if n else None,
                                 "tokens": n, "ended_with_end": ended}
            examples.append(example)
            eta = (time.time() - started) / i * (len(found) - i)
            stage.at(i, f"example {i}/{len(found)}, ETA {fmt_duration(eta)}", eta_s=eta)
            writer.emit("example", task="eval", **example)
        result = {"rows": len(found), "dataset": dataset, "base_model": base,
                  "base": summarise(examples, "base"), "adapter": summarise(examples, "adapter")}
        writer.emit("evaluation", task="eval", **result)
        if update_card:
            from phi3space.hub.model_index import card_repo, put_eval_results

            repo = card_repo(path, str(adapter))
            if repo:
                put_eval_results(repo, result, token, writer)
    return result
