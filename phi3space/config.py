"""RunConfig: the one typed, validated description of a run.

Built from YAML plus ``--set a.b=value`` overrides, checked up front (all problems reported at once, each by key
name with the allowed values), saved beside the run and pushed with the adapter so that a run can be repeated.
Each field carries its help text in ``metadata["help"]``: that is the reference the README and the UI show.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

DEFAULT_BASE = "microsoft/Phi-3-mini-4k-instruct"
PHI3_TARGET_MODULES = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
METHODS = ("lora", "qlora")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    base: str = _f(DEFAULT_BASE, "Phi-3 / Phi-3.5 checkpoint: Hub ID or local folder.")
    method: str = _f("lora", "lora (16/32-bit base) or qlora (4-bit nf4 base).", choices=METHODS)
    attn_implementation: str = _f("auto", "auto, flash_attention_2, sdpa or eager.",
                                  choices=("auto", "flash_attention_2", "sdpa", "eager"))


@dataclass
class DataConfig:
    dataset: str = _f("", "Hub dataset ID, or a local JSON/JSONL/CSV/Parquet file or folder.")
    config_name: str | None = _f(None, "Hub dataset configuration (subset) name.")
    split: str = _f("train", "Split to train on.")
    eval_split: str | None = _f(None, "Split to evaluate on; when empty, eval_fraction of the training rows is held out.")
    eval_fraction: float = _f(0.1, "Share of training rows held out for evaluation when there is no eval_split (0 = none).")
    max_samples: int | None = _f(None, "Use at most this many training rows (after cleaning).")
    columns: dict = _f({}, "Map our names to yours, e.g. {prompt: question, completion: answer} or {messages: dialog}.")


@dataclass
class LoraSettings:
    r: int = _f(16, "LoRA rank.")
    alpha: int = _f(32, "LoRA alpha (scale = alpha / r).")
    dropout: float = _f(0.05, "Dropout on the LoRA path, in [0, 1).")
    target_modules: Any = _f("all-linear", "all-linear, or a list of Phi-3 linear layers: " + ", ".join(PHI3_TARGET_MODULES))


@dataclass
class TrainingConfig:
    learning_rate: float = _f(2e-4, "Peak learning rate (LoRA, not full fine-tuning).")
    lr_scheduler: str = _f("cosine", "Learning-rate schedule.", choices=SCHEDULERS)
    warmup_ratio: float = _f(0.03, "Share of steps spent warming up, in [0, 1).")
    epochs: float = _f(1.0, "Passes over the training rows (ignored when max_steps is set).")
    max_steps: int | None = _f(None, "Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = _f(4, "Rows per device per step.")
    grad_accum: int = _f(4, "Gradient accumulation steps (effective batch = batch_size x grad_accum x GPUs).")
    max_length: int = _f(2048, "Tokens per row; longer rows are truncated.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    seed: int = _f(42, "Random seed (data order, LoRA init, eval split).")
    logging_steps: int = _f(5, "Write a progress event every N steps.")
    eval_steps: int | None = _f(None, "Evaluate every N steps (default: at each checkpoint).")
    save_steps: int = _f(100, "Save a checkpoint every N steps.")
    save_total_limit: int = _f(2, "Checkpoints kept in the run folder.")
    gradient_checkpointing: bool = _f(True, "Trade compute for memory (GPU only; ignored on CPU).")
    packing: bool = _f(False, "Pack short rows together (needs flash-attention to stay correct).")


@dataclass
class OutputConfig:
    dir: str = _f("", "Run folder (default: runs/<base>-<dataset>-<method>).")
    push_to: str | None = _f(None, "Hub repo for the adapter (user/name), or 'auto' for <you>/<base>-<dataset>-<method>.")
    private: bool = _f(True, "Create the Hub repo as private.")
    push_checkpoints: bool = _f(False, "Also push each checkpoint (to the repo's 'checkpoints' branch).")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")

    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir)


_SECTION_CLASSES = {"model": ModelConfig, "data": DataConfig, "lora": LoraSettings, "training": TrainingConfig,
                    "output": OutputConfig}


def short_name(ref: str) -> str:
    """'microsoft/Phi-3-mini-4k-instruct' -> 'phi-3-mini-4k-instruct'; './data/qa.jsonl' -> 'qa'."""
    name = ref.rstrip("/").split("/")[-1]
    name = re.sub(r"\.(jsonl?|csv|parquet)$", "", name)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-").lower() or "run"


def default_run_name(cfg: RunConfig) -> str:
    return f"{short_name(cfg.model.base)}-{short_name(cfg.data.dataset)}-{cfg.model.method}"


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError([f"--set {item!r}: expected KEY=VALUE, e.g. --set lora.r=8"])
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _allowed_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in _SECTION_CLASSES.items() for f in fields(cls)]


def _coerce(value: Any, default: Any, key: str, problems: list[str]) -> Any:
    """Coerce YAML/--set values to the field's type (numbers written as strings, '1e-4', ...)."""
    if value is None:
        return None
    if key == "lora.target_modules":
        return value
    kind = type(default) if default is not None else None
    if key in ("training.max_steps", "data.max_samples", "training.eval_steps"):
        kind = int
    if key == "data.eval_fraction":
        kind = float
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) else int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            return str(value)
    except (TypeError, ValueError):
        problems.append(f"{key}: expected {kind.__name__}, got {value!r}")
        return default
    return value


def from_dict(raw: dict | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Build and validate a RunConfig from a nested dict plus ``KEY=VALUE`` overrides.

    Raises:
        ConfigError: listing every unknown key and invalid value at once.
    """
    raw = dict(raw or {})
    problems: list[str] = []
    flat: dict[str, Any] = {}
    for section, values in raw.items():
        if section not in _SECTION_CLASSES:
            flat[str(section)] = values
        elif values is None:
            continue
        elif not isinstance(values, dict):
            problems.append(f"{section}: expected a mapping of settings, got {values!r}")
        else:
            for k, v in values.items():
                flat[f"{section}.{k}"] = v
    for item in overrides:
        key, value = _parse_override(item)
        flat[key] = value

    allowed = _allowed_keys()
    cfg = RunConfig()
    for key, value in flat.items():
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            problems.append(f"{key}: unknown setting" + (f" (did you mean {close[0]}?)" if close else
                                                          f"; known sections: {', '.join(_SECTION_CLASSES)}"))
            continue
        section, name = key.split(".", 1)
        part = getattr(cfg, section)
        setattr(part, name, _coerce(value, getattr(part, name), key, problems))
    problems += _validate(cfg)
    if problems:
        raise ConfigError(problems)
    if not cfg.output.dir:
        cfg.output.dir = str(Path("runs") / default_run_name(cfg))
    return cfg


def load(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML run config (or start from defaults when ``path`` is None) and apply overrides."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError([f"config file not found: {p}"], "Pass the path of a YAML run config, e.g. configs/example.yaml.")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError([f"{p} is not valid YAML: {exc}"]) from None
        if not isinstance(raw, dict):
            raise ConfigError([f"{p} must hold a mapping (model:, data:, lora:, training:, output:)"])
    return from_dict(raw, overrides)


def loads(text: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Like ``load`` for YAML text (the web form and the API)."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"config is not valid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(["config must be a mapping (model:, data:, lora:, training:, output:)"])
    return from_dict(raw, overrides)


def _validate(cfg: RunConfig) -> list[str]:
    p: list[str] = []
    m, d, lo, t, o = cfg.model, cfg.data, cfg.lora, cfg.training, cfg.output
    for section, cls in _SECTION_CLASSES.items():
        for f in fields(cls):
            choices = f.metadata.get("choices")
            value = getattr(getattr(cfg, section), f.name)
            if choices and value not in choices:
                p.append(f"{section}.{f.name}: {value!r} is not one of {', '.join(choices)}")
    if not m.base or not isinstance(m.base, str):
        p.append("model.base: required (a Hub ID such as microsoft/Phi-3-mini-4k-instruct, or a local folder)")
    if not d.dataset:
        p.append("data.dataset: required (a Hub dataset ID or a local JSON/JSONL/CSV/Parquet file)")
    if not 0 <= d.eval_fraction < 1:
        p.append(f"data.eval_fraction: {d.eval_fraction} is outside [0, 1)")
    if d.max_samples is not None and d.max_samples < 1:
        p.append(f"data.max_samples: {d.max_samples} must be at least 1 (or empty for all rows)")
    if not isinstance(d.columns, dict) or not all(isinstance(v, str) for v in d.columns.values()):
        p.append("data.columns: expected a mapping of our column names to yours, e.g. {prompt: question}")
    if lo.r < 1:
        p.append(f"lora.r: {lo.r} must be at least 1 (typical: 8-64)")
    if lo.alpha < 1:
        p.append(f"lora.alpha: {lo.alpha} must be at least 1 (typical: 2 x r)")
    if not 0 <= lo.dropout < 1:
        p.append(f"lora.dropout: {lo.dropout} is outside [0, 1)")
    tm = lo.target_modules
    if isinstance(tm, str) and "," in tm:
        lo.target_modules = tm = [x.strip() for x in tm.split(",") if x.strip()]
    if isinstance(tm, list):
        bad = [x for x in tm if x not in PHI3_TARGET_MODULES]
        if bad or not tm:
            p.append(f"lora.target_modules: {bad or tm} not Phi-3 linear layers; use all-linear or some of "
                     + ", ".join(PHI3_TARGET_MODULES) + " (Phi-3 fuses q/k/v into qkv_proj and gate/up into gate_up_proj)")
    elif tm != "all-linear":
        p.append(f"lora.target_modules: {tm!r}; use all-linear or a list of " + ", ".join(PHI3_TARGET_MODULES))
    if t.learning_rate <= 0 or t.learning_rate > 1:
        p.append(f"training.learning_rate: {t.learning_rate} must be in (0, 1] (LoRA typical: 1e-4 to 3e-4)")
    if not 0 <= t.warmup_ratio < 1:
        p.append(f"training.warmup_ratio: {t.warmup_ratio} is outside [0, 1)")
    if t.epochs <= 0:
        p.append(f"training.epochs: {t.epochs} must be greater than 0")
    if t.max_steps is not None and t.max_steps < 1:
        p.append(f"training.max_steps: {t.max_steps} must be at least 1 (or empty to use epochs)")
    for key in ("batch_size", "grad_accum", "logging_steps", "save_steps", "save_total_limit"):
        if getattr(t, key) < 1:
            p.append(f"training.{key}: {getattr(t, key)} must be at least 1")
    if t.eval_steps is not None and t.eval_steps < 1:
        p.append(f"training.eval_steps: {t.eval_steps} must be at least 1 (or empty)")
    if not 16 <= t.max_length <= 131072:
        p.append(f"training.max_length: {t.max_length} is outside [16, 131072] (Phi-3-mini-4k: up to 4096)")
    if o.push_checkpoints and not o.push_to:
        p.append("output.push_checkpoints: needs output.push_to (the repo whose 'checkpoints' branch gets them)")
    if o.push_to and o.push_to != "auto" and not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", o.push_to):
        p.append(f"output.push_to: {o.push_to!r} is not a repo ID like your-name/my-adapter (or 'auto')")
    return p


def reference() -> str:
    """The run config reference as a markdown table, from each field's default and help text (the README's
    "Run config reference" is this text; ``python -m phi3space config`` prints it)."""
    def shown(value: Any) -> str:
        if value in (None, "", {}) and not isinstance(value, bool):
            return ""
        return f"`{yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}`"

    lines = ["| key | default | meaning |", "|---|---|---|"]
    for section, cls in _SECTION_CLASSES.items():
        defaults = cls()
        for f in fields(cls):
            help = f.metadata.get("help", "")
            choices = f.metadata.get("choices")
            if choices:
                help += " One of: " + ", ".join(f"`{c}`" for c in choices) + "."
            help = help.replace("<", "&lt;").replace(">", "&gt;")
            lines.append(f"| `{section}.{f.name}` | {shown(getattr(defaults, f.name))} | {help} |")
    return "\n".join(lines) + "\n"
