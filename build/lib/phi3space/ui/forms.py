"""The training form as plain data: which settings it shows, form values <-> RunConfig, the plan (steps and
warnings) shown before Start, and Inspect. No gradio here; the Train tab lays these out."""

from __future__ import annotations

import hashlib
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phi3space import config as config_mod
from phi3space.config import RunConfig
from phi3space.config.fields import group_of, value_at
from phi3space.config.objectives import objective_of
from phi3space.engine.estimates import estimate_memory_gb, model_size
from phi3space.errors import ConfigError
from phi3space.jobs import spec as job_spec

BASE_MODELS = ["microsoft/Phi-3-mini-4k-instruct", "microsoft/Phi-3-mini-128k-instruct", "microsoft/Phi-3.5-mini-instruct"]

# The form's groups in page order; which settings each shows comes from their declarations (``group=`` in
# phi3space.config.schema). "main" is the dataset and model rows, "compute" the hardware box (compute_box.py), the
# others a settings panel each; a setting with no group (output.dir: the server chooses the run folder) is not shown.
GROUP_ORDER = ("main", "data", "lora", "training", "advanced", "output", "compute")


def _grouped() -> dict[str, list[str]]:
    """Form group -> the settings it shows, from each setting's declared group."""
    groups: dict[str, list[str]] = {group: [] for group in GROUP_ORDER}
    for key, f in job_spec.SETTINGS.items():
        group = group_of(key, f)
        if group is None:
            continue
        if group not in groups:
            raise ValueError(f"{key}: form group {group!r} is not one of {', '.join(GROUP_ORDER)}")
        groups[group].append(key)
    return {group: _home_first(keys) for group, keys in groups.items()}


def _home_first(keys: list[str]) -> list[str]:
    """A group's settings with those of its main section first (lora's own before model.init_adapter, training's
    before model.attn_implementation), each part in declaration order."""
    sections = [key.split(".")[0] for key in keys]
    home = max(sections, key=sections.count) if sections else None
    return [k for k in keys if k.split(".")[0] == home] + [k for k in keys if k.split(".")[0] != home]


GROUPS = _grouped()  # form group -> its settings ('section.name'), in declaration order
FIELDS = [key for keys in GROUPS.values() for key in keys]  # every setting the form shows, group by group
SERVER_CHOSEN = set(job_spec.SETTINGS) - set(FIELDS)
MAX_COLUMNS_TEXT = 2000

MIN_USEFUL_STEPS = 20


@dataclass
class FieldSpec:
    """How the form shows one setting, read from its declaration in the run config."""

    key: str
    label: str
    help: str
    default: Any
    kind: str  # text | int | float | bool | choice | mapping
    choices: tuple = ()
    optional: bool = False  # empty means "not set" (the config's default of None)
    placeholder: str | None = None
    step: float = 1  # (no min/max on the component: gradio would refuse out-of-range values without our message)


def config_keys() -> list[str]:
    """Every setting of a job's config (where it trains included), as section.name."""
    return list(job_spec.SETTINGS)


def field_spec(key: str) -> FieldSpec:
    """How the form shows one setting: kind, default, help, choices, step and placeholder, all from its declaration."""
    f = job_spec.SETTINGS[key]
    default = value_at(job_spec.JobConfig(), key)
    types = [t.strip() for t in str(f.type).split("|")]
    choices = tuple(f.metadata.get("choices", ()))
    kind = ("choice" if choices else "bool" if types[0] == "bool" else "mapping" if types[0] == "dict"
            else types[0] if types[0] in ("int", "float") else "text")
    return FieldSpec(key, f.name.replace("_", " "), f.metadata.get("help", ""), default, kind, choices,
                     optional="None" in types or kind == "mapping", placeholder=f.metadata.get("placeholder"),
                     step=f.metadata.get("step", 1))


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


def from_card(repo_id: str, token: str | bool | None, push_to: str = "auto") -> dict[str, Any]:
    """The form's values to train again from an adapter's card (``?from=<repo>``): the run's whole pushed config,
    with the adapter going to ``push_to`` (the visitor's own account), never to the card's repo.

    Raises:
        HubError / AuthError: the repo cannot be read or holds no run config; ConfigError: that config is wrong.
    """
    from phi3space.hub.records import card_config

    cfg = job_spec.load(card_config(repo_id, token))
    cfg.output.push_to = push_to
    return form_values(cfg)


def form_values(cfg: RunConfig) -> dict[str, Any]:
    """The form's values for a config, by setting key (to fill the form from an uploaded YAML)."""
    cfg = job_spec.of(cfg)  # (with where it trains)
    return {key: shown(field_spec(key), value_at(cfg, key)) for key in FIELDS}


def default_values() -> dict[str, Any]:
    """The form's values before anyone touches it, by setting key: the RunConfig defaults (the CLI's)."""
    return form_values(job_spec.JobConfig())


def config_from_form(values: Mapping[str, Any], dataset: str | None = None) -> RunConfig:
    """A validated RunConfig from the form's values by setting key; ``dataset`` overrides data.dataset (uploads).
    An empty optional field (None or blank) means "not set"; a setting left out keeps its default.

    Raises:
        ConfigError: every invalid setting at once.
    """
    raw: dict[str, dict] = {}
    problems: list[str] = []
    for key, value in {**values, **({"data.dataset": dataset} if dataset else {})}.items():
        if isinstance(value, str):
            value = value.strip()
        spec = field_spec(key) if key in job_spec.SETTINGS else None
        if spec and spec.kind == "mapping":
            try:
                value = parse_columns(value or "")
            except ConfigError as exc:
                problems += exc.problems
                continue
        if spec and spec.optional and value in (None, "", {}):
            continue
        section, _, name = key.partition(".")
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
        """Rows per token length, in about ``bins`` equal bins, as a frame for the bar plot (tokens, rows)."""
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
    from phi3space.engine import objectives

    objective = objectives.objective_of(cfg)  # what it needs inside a job: its data, its example
    found = objective.rows_to_show(cfg, token)
    segments = objective.example_segments(found.train[0], found.tokenizer)
    report = found.report
    return Inspection(cfg.data.dataset, "\n".join(report.lines()), report.estimated_train_rows(), report.lengths, segments)


# ---------------------------------------------------------------- plan

@dataclass
class Plan:
    """What the form says before Start: the optimizer steps (None until Inspect counted the rows), the warnings,
    and on Hugging Face Jobs the cost line."""

    steps: int | None
    warnings: list[str]
    cost: str | None = None  # on Hugging Face Jobs: the flavor, its price and the estimated cost

    def markdown(self) -> str:
        """The plan as the markdown shown under the form."""
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
    """Optimizer steps the run will take: max_steps when set, else epochs over ``rows`` (at most max_samples) with
    the batch spread over ``devices``; None when the rows are not known yet."""
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
            rows = objective_of(cfg).rows  # (a pair: its prompt with the longer answer)
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
