"""A run's model card (README.md) and loss-curve PNG, rendered from its RunState."""

from __future__ import annotations

from phi3space.config import RunConfig
from phi3space.config.objectives import objective_of
from phi3space.generation import DEFAULTS as GENERATION
from phi3space.refs import is_hub_id
from phi3space.run import RunDir, RunState

RECORD_TAG = "phi3space"  # every adapter card carries it; list_models(filter=...) finds them
RECORD_KEY = "phi3space"  # the front matter key of a web app job's record


def plot_loss(state: RunState, path) -> bool:
    """Write the train/eval loss curve as a PNG; False when there is nothing to plot yet."""
    if not state.train_losses and not state.eval_losses:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if state.train_losses:
        ax.plot(*zip(*state.train_losses), label="train loss")
    if state.eval_losses:
        ax.plot(*zip(*state.eval_losses), "o-", label="eval loss")
    for split, rewards, style in (("train", state.train_rewards, "-"), ("eval", state.eval_rewards, "o--")):
        if rewards:  # a DPO run
            steps = [step for step, _, _ in rewards]
            ax.plot(steps, [acc for _, acc, _ in rewards], style, label=f"{split} reward accuracy")
            ax.plot(steps, [margin or 0 for _, _, margin in rewards], style, label=f"{split} reward margin")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _card_data(cfg: RunConfig, license: str | None, record: dict | None):
    """The front matter: what the Hub indexes (tags, base model, datasets) and, for a web app job, its record
    (phi3space.records: which job, of which Space, how far it got), which is how a run is found again."""
    from huggingface_hub import ModelCardData

    tags = [cfg.model.method, cfg.training.objective, "trl", "peft", "phi3", RECORD_TAG]
    extra = {RECORD_KEY: record} if record else {}
    return ModelCardData(base_model=cfg.model.base if is_hub_id(cfg.model.base) else None, library_name="peft",
                         pipeline_tag="text-generation", tags=tags, license=license,
                         datasets=[cfg.data.dataset] if is_hub_id(cfg.data.dataset) else None, **extra)


def pending_card(cfg: RunConfig, repo_id: str, record: dict) -> str:
    """The card a web app job puts on its repo when it is queued: the record that lets the visitor find the run
    again after the Space restarts, until the final card replaces it."""
    from huggingface_hub import ModelCard

    body = f"""
# {repo_id.split('/')[-1]}

A {'QLoRA' if cfg.model.method == 'qlora' else 'LoRA'} adapter for [{cfg.model.base}]({_link(cfg.model.base)}) on
`{cfg.data.dataset}`, being trained with phi3space (job `{record.get('job')}`). The adapter and its results appear
here when the run ends; until then, checkpoints go to the `checkpoints` branch. `{RunDir.CONFIG}` holds the run's
settings.
"""
    return str(ModelCard.from_template(_card_data(cfg, None, record), template_str="---\n{{ card_data }}\n---\n" + body))


def model_card(cfg: RunConfig, state: RunState, license: str | None = None, repo_id: str | None = None,
               metrics: dict | None = None, record: dict | None = None) -> str:
    """Model card text (YAML front matter + markdown); no secrets, only the resolved config. ``metrics``: the final
    ones, when the run is finishing and its run_finished event is not written yet. ``record``: a web app job's
    record for the front matter (see phi3space.records)."""
    from huggingface_hub import ModelCard

    m = state.results(metrics)
    hardware = state.hardware
    data = _card_data(cfg, license, record)
    fmt = lambda v, spec=".4f": "n/a" if v is None else format(v, spec) if isinstance(v, float) else str(v)  # noqa: E731
    t, lo = cfg.training, cfg.lora
    adapter = repo_id or "path/to/this/folder"
    rows = [("method", cfg.model.method), ("LoRA r / alpha / dropout", f"{lo.r} / {lo.alpha} / {lo.dropout}"),
            ("target modules", lo.target_modules if isinstance(lo.target_modules, str) else ", ".join(lo.target_modules)),
            ("learning rate", f"{t.learning_rate:g} ({t.lr_scheduler}, warmup {t.warmup_ratio:g})"),
            ("epochs / max steps", f"{t.epochs:g} / {t.max_steps or '-'}"),
            ("batch size x grad accum", f"{t.batch_size} x {t.grad_accum}"), ("max length", t.max_length),
            ("seed", t.seed)]
    objective = objective_of(cfg)
    rows[:0] = objective.card_settings(cfg)
    if cfg.model.init_adapter:
        rows[:0] = [("started from adapter", cfg.model.init_adapter)]
    body = f"""
# {repo_id.split('/')[-1] if repo_id else RunDir(cfg.output.dir).path.name}

A {'QLoRA' if cfg.model.method == 'qlora' else 'LoRA'} adapter for [{cfg.model.base}]({_link(cfg.model.base)}),
{_how(cfg)}

## Results

| metric | value |
|---|---|
| final eval loss | {fmt(m.get('eval_loss'))} |
| best eval loss | {fmt(m.get('best_eval_loss'))} |
""" + "".join(f"| {label} | {fmt(m.get(key))} |\n" for label, key in objective.card_results) + f"""\
| final train loss | {fmt(m.get('final_train_loss'))} |
| mean train loss (whole run) | {fmt(m.get('train_loss'))} |
| steps | {fmt(m.get('steps'))} |
| tokens | {fmt(m.get('tokens'))} |
| training time (s) | {fmt(m.get('train_runtime_s'), '.0f')} |
| hardware | {hardware or 'n/a'} |

![loss curve]({RunDir.PLOT})

## Hyperparameters

| setting | value |
|---|---|
""" + "".join(f"| {k} | {v} |\n" for k, v in rows) + f"""
{train_again(cfg, state, repo_id)}

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
output = model.generate(**inputs, max_new_tokens={GENERATION.max_new_tokens}, eos_token_id=stop)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```
"""
    if state.general:
        from phi3space.hub.model_index import general_results, general_section

        data.eval_results = general_results(state.general)
        data.model_name = repo_id.split("/")[-1] if repo_id else RunDir(cfg.output.dir).path.name
        body += "\n" + general_section(state.general)
    return str(ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body))


def train_again(cfg: RunConfig, state: RunState, repo_id: str | None) -> str:
    """The card's "Train again" section: what makes the run repeatable (its whole config with the dataset's commit,
    the app's and libraries' versions), a link that opens the Space's form filled from this card for the visitor's
    own account, and the same from a terminal, here or on Hugging Face Jobs."""
    import phi3space
    from phi3space.hub.space import public_space

    versions = {"phi3space": phi3space.__version__, **state.versions}
    pinned = (f" at commit `{cfg.data.revision}`" if cfg.data.revision and is_hub_id(cfg.data.dataset) else "")
    lines = [f"`{RunDir.CONFIG}` holds the whole run: every setting, the dataset `{cfg.data.dataset}`{pinned}. It was "
             "trained with " + ", ".join(f"{name} {v}" for name, v in versions.items()) + "."]
    repo = repo_id or "you/this-adapter"
    space = public_space()
    if space:
        lines.append(f"\n[**Train again**](https://huggingface.co/spaces/{space}?from={repo}) opens the form of the "
                     f"{space} Space filled from this card, to train under your own account.")
    folder = repo.split("/")[-1]
    lines.append(f"""
From a terminal (the adapter goes to your own account):

```bash
hf download {repo} {RunDir.CONFIG} --local-dir {folder}
python -m phi3space train {folder}/{RunDir.CONFIG} --set output.push_to=auto
# or on Hugging Face Jobs (billed to you):
python -m phi3space train {folder}/{RunDir.CONFIG} --set output.push_to=auto --set compute.backend=hf-jobs
```""")
    return "## Train again\n\n" + "\n".join(lines)


def _how(cfg: RunConfig) -> str:
    """How the adapter was trained, in a sentence."""
    start = f", starting from the adapter `{cfg.model.init_adapter}`" if cfg.model.init_adapter else ""
    return objective_of(cfg).how_trained(cfg.data.dataset, start)


def _link(ref: str) -> str:
    return f"https://huggingface.co/{ref}" if is_hub_id(ref) else ref


def write_card(cfg: RunConfig, run: RunDir, license: str | None = None, repo_id: str | None = None,
               metrics: dict | None = None, record: dict | None = None) -> None:
    """(Re)write the run folder's loss curve and model card from its events (plus ``metrics`` and ``record``, see
    model_card)."""
    state = run.state()
    plot_loss(state, run.plot)
    run.card.write_text(model_card(cfg, state, license, repo_id, metrics, record), encoding="utf-8")
