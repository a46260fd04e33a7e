"""The training form as plain data: which settings it shows, form values <-> RunConfig, the plan (steps and
warnings) shown before Start, and Inspect. No gradio here; the Train tab lays these out."""

from __future__ import annotations

import hashlib
import math
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from phi3space import config as config_mod
from phi3space.config import RunConfig
from phi3space.engine.estimates import estimate_memory_gb, model_size
from phi3space.errors import ConfigError
from phi3space.jobs import spec as job_spec

BASE_MODELS = ["microsoft/Phi-3-mini-4k-instruct", "microsoft/Phi-3-mini-128k-instruct", "microsoft/Phi-3.5-mini-instruct"]

# Every setting of a RunConfig is in the form except output.dir (the server chooses the run folder); a test checks
# that. The Train tab builds one component per key, grouped like this, in a list in FIELDS order.
MAIN_FIELDS = ["data.dataset", "model.base", "model.method", "training.objective"]
DATA_FIELDS = ["data.split", "data.config_name", "data.eval_split", "data.eval_fraction", "data.max_samples",
               "data.columns"]
LORA_FIELDS = ["lora.r", "lora.alpha", "lora.dropout", "lora.target_modules", "model.init_adapter"]
TRAINING_FIELDS = ["training.learning_rate", "training.lr_scheduler", "training.warmup_ratio", "training.epochs",
                   "training.max_steps", "training.batch_size", "training.grad_accum", "training.max_length",
                   "training.weight_decay", "training.seed", "training.beta", "training.loss_type"]
ADVANCED_FIELDS = ["training.logging_steps", "training.eval_steps", "training.save_steps", "training.save_total_limit",
                   "training.gradient_checkpointing", "training.packing", "model.attn_implementation",
                   "logging.report_to"]
OUTPUT_FIELDS = ["output.push_to", "output.private", "output.push_checkpoints"]
COMPUTE_FIELDS = ["compute.backend", "compute.flavor", "compute.timeout", "compute.gpus"]  # laid out by compute_box.py
FIELDS = MAIN_FIELDS + DATA_FIELDS + LORA_FIELDS + TRAINING_FIELDS + ADVANCED_FIELDS + OUTPUT_FIELDS + COMPUTE_FIELDS
SERVER_CHOSEN = {"output.dir"}

# What an empty optional field means, shown inside it (a gr.Number without a placeholder turns "empty" into 0).
PLACEHOLDERS = {
    "data.config_name": "empty: the default configuration",
    "data.eval_split": "empty: hold out the eval fraction",
    "data.max_samples": "empty: all rows",
    "data.columns": "e.g. prompt: question, completion: answer",
    "training.max_steps": "empty: use epochs",
    "training.eval_steps": "empty: at each checkpoint",
    "output.push_to": "you/my-adapter",
    "model.init_adapter": "empty: a new adapter; e.g. you/my-sft-adapter",
}
# Spinner steps for fractional settings (the browser's default step of 1 jumps over every useful value).
STEPS = {"training.learning_rate": 1e-5, "training.warmup_ratio": 0.01, "training.weight_decay": 0.01,
         "training.epochs": 0.5, "lora.dropout": 0.01, "data.eval_fraction": 0.01, "training.beta": 0.01}
MAX_COLUMNS_TEXT = 2000

MIN_USEFUL_STEPS = 20


@dataclass
class FieldSpec:
    key: str
    label: str
    help: str
    default: Any
    kind: str  # text | int | float | bool | choice | mapping
    choices: tuple = ()
    optional: bool = False  # empty means "not set" (the config's default of None)
    placeholder: str | None = None
    step: float = 1  # (no min/max on the component: gradio would refuse out-of-range values without our message)


def _config_field(key: str):
    section, name = key.split(".")
    cls = job_spec.SECTIONS[section]
    return cls, next(f for f in fields(cls) if f.name == name)


def config_keys() -> list[str]:
    """Every setting of a RunConfig, as section.name."""
    return [f"{s}.{f.name}" for s, cls in job_spec.SECTIONS.items() for f in fields(cls)]


def field_spec(key: str) -> FieldSpec:
    """How the form shows one setting: kind, default, help, range and placeholder, all from the config's dataclasses."""
    cls, f = _config_field(key)
    default = getattr(cls(), f.name)
    types = [t.strip() for t in str(f.type).split("|")]
    choices = tuple(f.metadata.get("choices", ()))
    kind = ("choice" if choices else "bool" if types[0] == "bool" else "mapping" if types[0] == "dict"
            else types[0] if types[0] in ("int", "float") else "text")
    return FieldSpec(key, f.name.replace("_", " "), f.metadata.get("help", ""), default, kind, choices,
                     optional="None" in types or kind == "mapping", placeholder=PLACEHOLDERS.get(key),
                     step=STEPS.get(key, 1))


def format_columns(columns: dict) -> str:
    """{prompt: q, completion: a} as the form shows it: 'prompt: q, completion: a'."""
    return ", ".join(f"{ours}: {theirs}" for ours, theirs in (columns or {}).items())


def parse_columns(text: str) -> dict:
    """The form's column mapping ('prompt: q, completion: a', with or without braces) as a dict.

    Raises:
        ConfigError: not a mapping of names.
    """
    text = (text or "").strip()
    if not text:
        return {}
    example = "e.g. prompt: question, completion: answer"
    if len(text) > MAX_COLUMNS_TEXT:
        raise ConfigError([f"data.columns: {len(text)} characters is too long for a column mapping"], example)
    import yaml

    flow = text if text.startswith("{") else "{" + text.replace("\n", ", ") + "}"
    try:
        value = yaml.safe_load(flow)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict) or not value or any(v is None or isinstance(v, (dict, list)) for v in value.values()):
        raise ConfigError([f"data.columns: {text[:60]!r} is not a mapping of our names to your columns"],
                          f"Write it as ours: yours, {example}.")
    return {str(k): str(v) for k, v in value.items()}


def shown(spec: FieldSpec, value: Any) -> Any:
    """A setting's value as its form field holds it (lists and mappings as text, an unset optional as empty)."""
    if spec.key == "lora.target_modules" and isinstance(value, list):
        return ", ".join(value)
    if spec.kind == "mapping":
        return format_columns(value)
    if spec.optional and spec.kind in ("int", "float"):
        return "" if value is None else str(value)  # typed into a text box: see text_entry()
    if value is None and spec.kind == "text":
        return ""
    return value


def form_values(cfg: RunConfig) -> list:
    """The form's values for a config, in FIELDS order (to fill the form from an uploaded YAML)."""
    cfg = job_spec.of(cfg)  # (with where it trains)
    return [shown(field_spec(key), getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1])) for key in FIELDS]


def default_values() -> list:
    """The form's values before anyone touches it: the RunConfig defaults (the CLI's), in FIELDS order."""
    return form_values(RunConfig())


def config_from_form(values: list | tuple, dataset: str | None = None) -> RunConfig:
    """A validated RunConfig from the form's values (FIELDS order); ``dataset`` overrides data.dataset (uploads).
    An empty optional field (None or blank) means "not set".

    Raises:
        ConfigError: every invalid setting at once.
    """
    raw: dict[str, dict] = {}
    problems: list[str] = []
    for key, value in zip(FIELDS, values, strict=True):
        if isinstance(value, str):
            value = value.strip()
        if key == "data.dataset" and dataset:
            value = dataset
        spec = field_spec(key)
        if spec.kind == "mapping":
            try:
                value = parse_columns(value or "")
            except ConfigError as exc:
                problems += exc.problems
                continue
        if spec.optional and value in (None, "", {}):
            continue
        section, name = key.split(".")
        raw.setdefault(section, {})[name] = value
    try:
        cfg = job_spec.from_dict(raw)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems, "Fix the settings named above.")
    return cfg


def fits(key: str, value: Any) -> bool:
    """Whether a stored value can go back into the form's field for ``key`` (stored page state comes from the
    browser: anything else is left out)."""
    spec = field_spec(key)
    if spec.kind == "bool":
        return isinstance(value, bool)
    if spec.kind == "choice":
        return value in spec.choices
    if spec.kind in ("int", "float") and not text_entry(spec):
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
    return isinstance(value, str) and len(value) <= 10_000


def text_entry(spec: FieldSpec) -> bool:
    """An optional number is typed into a text box: gradio 6's number box turns "empty" into 0 as soon as it is
    drawn (the moment its accordion opens), which would set max_steps, eval_steps or max_samples to 0."""
    return spec.kind in ("text", "mapping") or (spec.optional and spec.kind in ("int", "float"))


def run_name(cfg: RunConfig, typed: str | None, taken: list[str] | set[str]) -> str:
    """The name a new run gets: what the visitor typed, else <base>-<dataset>-<method>; numbered past ``taken`` (a
    second run of the same name is name-2, so two runs never look alike in the list)."""
    from phi3space.jobs.followups import unique_name

    return unique_name(" ".join((typed or "").split())[:80] or config_mod.default_run_name(cfg), taken)


def stash_upload(path: str | Path, folder: Path) -> Path:
    """Copy an uploaded data file to the visitor's uploads ``folder`` (gradio's upload cache is temporary)."""
    src = Path(path)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:10]
    dest = folder / f"{digest}-{src.name}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        shutil.copyfile(src, dest)
    return dest


# ---------------------------------------------------------------- inspect

@dataclass
class Inspection:
    """What Inspect found, small enough to keep per visitor between clicks."""

    dataset: str
    text: str
    rows: int
    lengths: list[int] = field(default_factory=list)
    segments: list[tuple[str, str | None]] = field(default_factory=list)

    def histogram(self, bins: int = 20):
        import pandas as pd

        if not self.lengths:
            return pd.DataFrame({"tokens": [], "rows": []})
        top = max(self.lengths)
        width = max(1, math.ceil((top + 1) / bins))
        counts: dict[int, int] = {}
        for n in self.lengths:
            start = n // width * width
            counts[start] = counts.get(start, 0) + 1
        xs = sorted(counts)
        return pd.DataFrame({"tokens": xs, "rows": [counts[x] for x in xs]})


def inspect_dataset(cfg: RunConfig, token: str | None) -> Inspection:
    """What ``phi3space inspect`` shows: format, rows kept/dropped and why, token lengths, one rendered example
    (from the first rows of a large split; the row count is then scaled to the whole split). For DPO, the rows are
    preference pairs and the example is a prompt with its chosen and rejected answers."""
    from phi3space.engine import data, pairs, tokens

    t = cfg.training
    if t.objective == "dpo":
        found = pairs.prepare_pairs(cfg.data, cfg.model.base, t.max_length, t.seed, token)
        segments = pairs.render_pair(found.train[0], found.tokenizer)
    else:
        found = data.prepare_with_tokenizer(cfg.data, cfg.model.base, t.max_length, t.seed, token)
        segments = [(text, "trained" if trained else None)
                    for text, trained in tokens.render_segments(found.train[0], found.tokenizer)]
    report = found.report
    return Inspection(cfg.data.dataset, "\n".join(report.lines()), report.estimated_train_rows(), report.lengths, segments)


# ---------------------------------------------------------------- plan

@dataclass
class Plan:
    steps: int | None
    warnings: list[str]
    cost: str | None = None  # on Hugging Face Jobs: the flavor, its price and the estimated cost

    def markdown(self) -> str:
        if self.steps:
            steps = f"**{self.steps} optimizer step{'s' if self.steps != 1 else ''}**"
        else:
            steps = "Steps: press **Inspect** to count the rows."
        return "\n".join([steps] + ([f"\n{self.cost}"] if self.cost else []) + [f"- ⚠️ {w}" for w in self.warnings])


def gpu_memory_gb() -> float | None:
    """GPU memory the next job can use: free now on the first GPU (nvidia-smi: the web server never imports torch
    for it), plus what the chat models hold, since they give the GPU back when a job starts. None without a GPU."""
    from phi3space.engine.hardware import memory_for_training_gb
    from phi3space.ui.chat_service import held_gb

    return memory_for_training_gb(held_gb())


def planned_steps(cfg: RunConfig, rows: int | None, devices: int = 1) -> int | None:
    t = cfg.training
    if t.max_steps:
        return t.max_steps
    if not rows:
        return None
    rows = min(rows, cfg.data.max_samples or rows)
    per_epoch = math.ceil(math.ceil(rows / t.batch_size / max(devices, 1)) / t.grad_accum)
    return max(1, math.ceil(per_epoch * t.epochs))


def plan(cfg: RunConfig, inspection: Inspection | None = None, gpu_gb: float | None = None) -> Plan:
    """Steps and the warnings a user needs before pressing Start."""
    t = cfg.training
    seen = inspection if inspection is not None and inspection.dataset == cfg.data.dataset else None
    job = job_spec.of(cfg)
    jobs = job_spec.backend_class(job.compute.backend).estimate(job, seen.rows if seen else None,
                                                               seen.lengths if seen else None)
    if jobs is not None:  # the flavor's GPUs, not this machine's, and what they will cost
        gpu_gb = jobs.flavor.memory_gb
    steps = planned_steps(cfg, seen.rows if seen else None, jobs.flavor.gpus if jobs else 1)
    warnings = jobs.warnings() if jobs else []
    if steps is not None and steps < MIN_USEFUL_STEPS:
        warnings.append(f"only {steps} step{'s' if steps != 1 else ''}: too few for the adapter to learn much. Raise "
                        f"epochs or max_steps (or lower batch size x grad accum).")
    if seen and seen.rows and t.batch_size > seen.rows:
        warnings.append(f"batch size {t.batch_size} is more than the {seen.rows} training rows: each step sees every "
                        f"row once. Lower batch size to {max(1, seen.rows // 2)} or less for more steps per epoch.")
    if seen and seen.lengths:
        over = sum(n > t.max_length for n in seen.lengths) / len(seen.lengths)
        if over > 0.5:
            p90 = sorted(seen.lengths)[int(0.9 * (len(seen.lengths) - 1))]
            rows = "pairs" if t.objective == "dpo" else "rows"  # (a pair: its prompt with the longer answer)
            warnings.append(f"{over:.0%} of {rows} are longer than max_length {t.max_length} and will be truncated "
                            f"(90% of {rows} fit in {p90} tokens): raise max_length.")
    need = estimate_memory_gb(cfg)
    if gpu_gb is None:
        if jobs is None and model_size(cfg.model.base)[0] > 5e8:
            warnings.append("no GPU on this machine: training a Phi-3 on the CPU would take days. Use GPU hardware.")
    elif need > 0.9 * gpu_gb:
        fix = "use QLoRA, or lower max_length or batch size" if cfg.model.method == "lora" else "lower max_length or batch size"
        warnings.append(f"this will likely not fit in this GPU's memory (about {need:.0f} GB needed, {gpu_gb:.0f} GB "
                        f"free): {fix}.")
    return Plan(steps, warnings, jobs.markdown() if jobs else None)
