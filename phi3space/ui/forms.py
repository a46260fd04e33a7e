"""The training form as plain data: which settings it shows, form values <-> RunConfig, the plan (steps and
warnings) shown before Start, and Inspect. No gradio here; the Train tab lays these out."""

from __future__ import annotations

import hashlib
import math
import shutil
import subprocess
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from .. import config as config_mod
from ..config import RunConfig
from ..modeling import estimate_memory_gb, model_size

BASE_MODELS = ["microsoft/Phi-3-mini-4k-instruct", "microsoft/Phi-3-mini-128k-instruct", "microsoft/Phi-3.5-mini-instruct"]

# The settings the form shows, in order. The Train tab builds one component per key, in a list in this order.
MAIN_FIELDS = ["data.dataset", "model.base", "model.method"]
LORA_FIELDS = ["lora.r", "lora.alpha", "lora.dropout", "lora.target_modules"]
TRAINING_FIELDS = ["training.learning_rate", "training.lr_scheduler", "training.warmup_ratio", "training.epochs",
                   "training.max_steps", "training.batch_size", "training.grad_accum", "training.max_length",
                   "training.logging_steps", "training.save_steps", "training.eval_steps", "data.eval_fraction",
                   "data.max_samples", "data.config_name", "data.split", "data.eval_split", "training.seed",
                   "training.gradient_checkpointing"]
OUTPUT_FIELDS = ["output.push_to", "output.private", "output.push_checkpoints"]
COMPUTE_FIELDS = ["compute.backend", "compute.flavor", "compute.timeout", "compute.gpus"]  # laid out by compute_box.py
FIELDS = MAIN_FIELDS + LORA_FIELDS + TRAINING_FIELDS + OUTPUT_FIELDS + COMPUTE_FIELDS
OPTIONAL = {"training.max_steps", "training.eval_steps", "data.max_samples", "output.push_to", "data.config_name",
            "data.eval_split"}

MIN_USEFUL_STEPS = 20


@dataclass
class FieldSpec:
    key: str
    label: str
    help: str
    default: Any
    kind: str  # text | int | float | bool | choice
    choices: tuple = ()


def field_spec(key: str) -> FieldSpec:
    section, name = key.split(".")
    cls = config_mod._SECTION_CLASSES[section]
    f = next(f for f in fields(cls) if f.name == name)
    default = getattr(cls(), name)
    choices = tuple(f.metadata.get("choices", ()))
    if choices:
        kind = "choice"
    elif isinstance(default, bool):
        kind = "bool"
    elif isinstance(default, int) or key in ("training.max_steps", "training.eval_steps", "data.max_samples"):
        kind = "int"
    elif isinstance(default, float):
        kind = "float"
    else:
        kind = "text"
    return FieldSpec(key, name.replace("_", " "), f.metadata.get("help", ""), default, kind, choices)


def form_values(cfg: RunConfig) -> list:
    """The form's values for a config, in FIELDS order (to fill the form from an uploaded YAML)."""
    out = []
    for key in FIELDS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if key == "lora.target_modules" and isinstance(value, list):
            value = ", ".join(value)
        out.append("" if value is None and key in OPTIONAL and field_spec(key).kind == "text" else value)
    return out


def config_from_form(values: list | tuple, dataset: str | None = None) -> RunConfig:
    """A validated RunConfig from the form's values (FIELDS order); ``dataset`` overrides data.dataset (uploads).

    Raises:
        ConfigError: every invalid setting at once.
    """
    raw: dict[str, dict] = {}
    for key, value in zip(FIELDS, values, strict=True):
        if isinstance(value, str):
            value = value.strip()
        if key in OPTIONAL and value in (None, ""):
            continue
        if key == "data.dataset" and dataset:
            value = dataset
        section, name = key.split(".")
        raw.setdefault(section, {})[name] = value
    return config_mod.from_dict(raw)


def stash_upload(path: str | Path, owner: str, root: Path) -> Path:
    """Copy an uploaded data file to the data folder (gradio's upload cache is temporary)."""
    src = Path(path)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:10]
    dest = root / "uploads" / owner / f"{digest}-{src.name}"
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
    """What ``phi3space inspect`` shows: format, rows kept/dropped and why, token lengths, one rendered example."""
    from .. import data

    found = data.prepare_with_tokenizer(cfg.data, cfg.model.base, cfg.training.max_length, cfg.training.seed, token)
    segments = [(text, "trained" if trained else None)
                for text, trained in data.render_segments(found.train[0], found.tokenizer)]
    report = found.report
    return Inspection(cfg.data.dataset, "\n".join(report.lines()), report.train_rows, report.lengths, segments)


# ---------------------------------------------------------------- plan

@dataclass
class Plan:
    steps: int | None
    warnings: list[str]
    cost: str | None = None  # on Hugging Face Jobs: the flavor, its price and the estimated cost

    def markdown(self) -> str:
        steps = f"**{self.steps} optimizer steps**" if self.steps else "Steps: press **Inspect** to count the rows."
        return "\n".join([steps] + ([f"\n{self.cost}"] if self.cost else []) + [f"- ⚠️ {w}" for w in self.warnings])


@lru_cache(maxsize=1)
def gpu_memory_gb() -> float | None:
    """Memory of the first GPU (from nvidia-smi, so that the web server never imports torch for it)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return float(out.splitlines()[0]) / 1024
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


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
    jobs = None
    if cfg.compute.backend == "hf-jobs":  # the flavor's GPUs, not this machine's, and what they will cost
        from ..flavors import estimate

        jobs = estimate(cfg, seen.rows if seen else None, seen.lengths if seen else None)
        gpu_gb = jobs.flavor.memory_gb
    steps = planned_steps(cfg, seen.rows if seen else None, jobs.flavor.gpus if jobs else 1)
    warnings = jobs.warnings() if jobs else []
    if steps is not None and steps < MIN_USEFUL_STEPS:
        warnings.append(f"only {steps} steps: too few for the adapter to learn much. Raise epochs or max_steps "
                        f"(or lower batch size x grad accum).")
    if seen and seen.lengths:
        over = sum(n > t.max_length for n in seen.lengths) / len(seen.lengths)
        if over > 0.5:
            p90 = sorted(seen.lengths)[int(0.9 * (len(seen.lengths) - 1))]
            warnings.append(f"{over:.0%} of rows are longer than max_length {t.max_length} and will be truncated "
                            f"(90% of rows fit in {p90} tokens): raise max_length.")
    need = estimate_memory_gb(cfg)
    if gpu_gb is None:
        if jobs is None and model_size(cfg.model.base)[0] > 5e8:
            warnings.append("no GPU on this machine: training a Phi-3 on the CPU would take days. Use GPU hardware.")
    elif need > 0.9 * gpu_gb:
        fix = "use QLoRA, or lower max_length or batch size" if cfg.model.method == "lora" else "lower max_length or batch size"
        warnings.append(f"this will likely not fit in this GPU's memory (about {need:.0f} GB needed, {gpu_gb:.0f} GB "
                        f"available): {fix}.")
    return Plan(steps, warnings, jobs.markdown() if jobs else None)
