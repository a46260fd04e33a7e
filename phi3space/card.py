"""Run artifacts built from events.jsonl: the loss-curve PNG and the model card (README.md)."""

from __future__ import annotations

from pathlib import Path

from .config import RunConfig
from .events import read_events
from .hub import is_hub_id

LOSS_PNG = "loss_curve.png"


def loss_series(events: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    train = [(e["step"], e["loss"]) for e in events if e.get("type") == "progress" and e.get("loss") is not None]
    evals = [(e["step"], e["eval_loss"]) for e in events if e.get("type") == "eval" and e.get("eval_loss") is not None]
    return train, evals


def plot_loss(events: list[dict], path: Path) -> Path | None:
    train, evals = loss_series(events)
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def results(events: list[dict]) -> dict:
    """Final metrics for the card: final and best eval loss, steps, tokens, time."""
    finished = [e for e in events if e.get("type") == "run_finished"]
    metrics = dict(finished[-1].get("metrics", {})) if finished else {}
    losses = [e["loss"] for e in events if e.get("type") == "progress" and e.get("loss") is not None]
    if losses:
        metrics["final_train_loss"] = losses[-1]
    evals = [e["eval_loss"] for e in events if e.get("type") == "eval" and e.get("eval_loss") is not None]
    if evals:
        metrics.setdefault("eval_loss", evals[-1])
        metrics["best_eval_loss"] = min(evals)
    return metrics


def model_card(cfg: RunConfig, events: list[dict], hardware: str = "", license: str | None = None,
               repo_id: str | None = None, metrics: dict | None = None) -> str:
    """Model card text (YAML front matter + markdown); no secrets, only the resolved config."""
    from huggingface_hub import ModelCard, ModelCardData

    m = {**results(events), **{k: v for k, v in (metrics or {}).items() if v is not None}}
    tags = [cfg.model.method, "sft", "trl", "peft", "phi3", "phi3space"]
    data = ModelCardData(base_model=cfg.model.base if is_hub_id(cfg.model.base) else None, library_name="peft",
                         pipeline_tag="text-generation", tags=tags, license=license,
                         datasets=[cfg.data.dataset] if is_hub_id(cfg.data.dataset) else None)
    fmt = lambda v, spec=".4f": "n/a" if v is None else format(v, spec) if isinstance(v, float) else str(v)  # noqa: E731
    t, lo = cfg.training, cfg.lora
    adapter = repo_id or "path/to/this/folder"
    rows = [("method", cfg.model.method), ("LoRA r / alpha / dropout", f"{lo.r} / {lo.alpha} / {lo.dropout}"),
            ("target modules", lo.target_modules if isinstance(lo.target_modules, str) else ", ".join(lo.target_modules)),
            ("learning rate", f"{t.learning_rate:g} ({t.lr_scheduler}, warmup {t.warmup_ratio:g})"),
            ("epochs / max steps", f"{t.epochs:g} / {t.max_steps or '-'}"),
            ("batch size x grad accum", f"{t.batch_size} x {t.grad_accum}"), ("max length", t.max_length),
            ("seed", t.seed)]
    body = f"""
# {repo_id.split('/')[-1] if repo_id else Path(cfg.output.dir).name}

A {'QLoRA' if cfg.model.method == 'qlora' else 'LoRA'} adapter for [{cfg.model.base}]({_link(cfg.model.base)}),
fine-tuned on `{cfg.data.dataset}` with phi3space (trl's SFTTrainer, loss on assistant turns only).

## Results

| metric | value |
|---|---|
| final eval loss | {fmt(m.get('eval_loss'))} |
| best eval loss | {fmt(m.get('best_eval_loss'))} |
| eval perplexity | {fmt(m.get('perplexity'))} |
| final train loss | {fmt(m.get('final_train_loss'))} |
| mean train loss (whole run) | {fmt(m.get('train_loss'))} |
| steps | {fmt(m.get('steps'))} |
| tokens | {fmt(m.get('tokens'))} |
| training time (s) | {fmt(m.get('train_runtime_s'), '.0f')} |
| hardware | {hardware or 'n/a'} |

![loss curve]({LOSS_PNG})

## Hyperparameters

| setting | value |
|---|---|
""" + "".join(f"| {k} | {v} |\n" for k, v in rows) + f"""
The full resolved configuration is in `config.yaml`; `python -m phi3space train config.yaml` repeats the run.

## Usage

```python
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{cfg.model.base}", dtype=torch.bfloat16, device_map="auto")
model = PeftModel.from_pretrained(base, "{adapter}")
tokenizer = AutoTokenizer.from_pretrained("{adapter}")

messages = [{{"role": "user", "content": "Hello!"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True).to(model.device)
stop = [tokenizer.convert_tokens_to_ids(t) for t in ("<|end|>", "<|endoftext|>", "<|assistant|>")]
output = model.generate(**inputs, max_new_tokens=256, eos_token_id=stop)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```
"""
    return str(ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body))


def _link(ref: str) -> str:
    return f"https://huggingface.co/{ref}" if is_hub_id(ref) else ref


def write_run_artifacts(cfg: RunConfig, run_dir: Path, hardware=None, license: str | None = None,
                        repo_id: str | None = None, metrics: dict | None = None) -> None:
    """(Re)write loss_curve.png and README.md in the run folder from its events."""
    events, _ = read_events(run_dir)
    plot_loss(events, run_dir / LOSS_PNG)
    hw = hardware.describe() if hasattr(hardware, "describe") else (hardware or "")
    if not hw:
        hw = next((e.get("hardware", "") for e in reversed(events) if e.get("type") == "run_started"), "")
    (run_dir / "README.md").write_text(model_card(cfg, events, hw, license, repo_id, metrics), encoding="utf-8")
