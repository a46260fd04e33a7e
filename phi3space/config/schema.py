"""The run config's settings: one dataclass per section, each field with its default and help text, the allowed
values (choices, numeric ranges), the names other tools use for them, run and repo names, and the validation rules.

Part of ``phi3space.config`` (imported from there); nothing here reads files or parses YAML.
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from phi3space.errors import looks_like_token
from phi3space.ranges import Range
from phi3space.refs import is_repo_id, ref_problem

DEFAULT_BASE = "microsoft/Phi-3-mini-4k-instruct"
PHI3_TARGET_MODULES = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
METHODS = ("lora", "qlora")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
REPORT_TO = ("none", "trackio", "wandb")  # transformers' report_to names of the trackers a run may also log to
OBJECTIVES = ("sft", "dpo")
# trl's DPOConfig.loss_type values for a pair of answers (trl 1.16; 'sft' and the unpaired ones left out).
DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "apo_zero",
              "apo_down", "discopop", "sigmoid_norm")
# Sections of a run's file that another layer defines: ``compute`` (where and on what the run trains) is the job's
# spec, phi3space.jobs.spec's. A plain RunConfig read from a file keeps them as written (``RunConfig.elsewhere``), so
# that a run's config saved or pushed from below that layer keeps them too.
ELSEWHERE = ("compute",)
FILE_ORDER = ("model", "data", "lora", "training", "output", "compute", "logging")  # the sections' order in a file


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
    init_adapter: str | None = _f(None, "Start from this LoRA adapter (a run folder or a Hub adapter repo, e.g. your SFT "
                                        "run) instead of a new one; its rank and layers replace the lora settings.")


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
    objective: str = _f("sft", "sft: learn the answers (conversations, prompt/completion); dpo: prefer the chosen "
                               "answer over the rejected one (prompt/chosen/rejected pairs).", choices=OBJECTIVES)
    beta: float = _f(0.1, "dpo: how far the adapter may move from the reference (higher: closer to it).")
    loss_type: str = _f("sigmoid", "dpo: trl's preference loss (sigmoid is DPO's own; ipo, hinge, robust, ...).",
                        choices=DPO_LOSSES)
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
    gradient_checkpointing: bool = _f(True, "Trade compute for memory (GPU only; off on CPU).")
    packing: bool = _f(False, "Pack short rows into max_length sequences (fewer, fuller steps; rows stay apart with "
                              "flash-attention, sdpa or eager).")


@dataclass
class OutputConfig:
    dir: str = _f("", "Run folder (default: runs/<base>-<dataset>-<method>).")
    push_to: str | None = _f(None, "Hub repo for the adapter (user/name), or 'auto' for "
                                   "<you>/<base>-<dataset>-<method>-<date>-<time> (a new repo per run).")
    private: bool = _f(True, "Create the Hub repo as private.")
    push_checkpoints: bool = _f(False, "Also push each checkpoint (to the repo's 'checkpoints' branch).")



@dataclass
class LoggingConfig:
    report_to: str = _f("none", "Also log the run to an experiment tracker, as transformers' report_to: none, trackio "
                                "(Hugging Face's tracker; a local dashboard, or a Space with TRACKIO_SPACE_ID) or wandb "
                                "(Weights & Biases; WANDB_API_KEY or wandb login). No token is put in its config.",
                         choices=REPORT_TO)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    elsewhere: dict = field(default_factory=dict)  # ELSEWHERE sections, as written (not read here)

    @property
    def hub_only(self) -> bool:
        """Where the run trains keeps nothing once it ends: its adapter and checkpoints must go to a Hub repo (a
        subclass that knows where it runs says so; phi3space.jobs.spec.JobConfig)."""
        return False

    @classmethod
    def aliases(cls) -> dict[str, str]:
        """What other tools call this class's settings (ALIASES, plus a subclass's own)."""
        return ALIASES

    def more_problems(self) -> list[str]:
        """What a subclass checks besides the recipe (its own sections), reported with the rest."""
        return []

    def to_dict(self) -> dict:
        """Every section as plain data (the YAML file's layout), the sections kept from elsewhere included."""
        out = {name: dataclasses.asdict(getattr(self, name)) for name in section_classes(type(self))}
        out.update((k, v) for k, v in self.elsewhere.items() if k not in out)
        return dict(sorted(out.items(), key=lambda kv: _order(kv[0])))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")

    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir)


def section_classes(cls: type[RunConfig] = RunConfig) -> dict[str, type]:
    """A config class's sections: name -> dataclass, in the file's order."""
    found = {f.name: type(f.default_factory()) for f in fields(cls) if f.name != "elsewhere"}
    return dict(sorted(found.items(), key=lambda kv: _order(kv[0])))


def _order(section: str) -> int:
    return FILE_ORDER.index(section) if section in FILE_ORDER else len(FILE_ORDER)


_SECTION_CLASSES = section_classes(RunConfig)


def short_name(ref: str) -> str:
    """'microsoft/Phi-3-mini-4k-instruct' -> 'phi-3-mini-4k-instruct'; './data/qa.jsonl' -> 'qa'."""
    name = ref.rstrip("/").split("/")[-1]
    name = re.sub(r"\.(jsonl?|csv|parquet)$", "", name)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-").lower() or "run"


def default_run_name(cfg: RunConfig) -> str:
    name = f"{short_name(cfg.model.base)}-{short_name(cfg.data.dataset)}-{cfg.model.method}"
    return f"{name}-dpo" if cfg.training.objective == "dpo" else name


def auto_repo_name(cfg: RunConfig) -> str:
    """The repo name ``output.push_to: auto`` resolves to: the run's name and the time it was resolved, so that
    two runs on the same base and data never overwrite each other's adapter (a resumed run keeps its repo: the
    resolved name is saved in its config; ``unused_auto_name`` keeps two resolved in one second apart)."""
    import time

    return f"{default_run_name(cfg)[:80]}-{time.strftime('%Y%m%d-%H%M%S')}"


def unused_auto_name(name: str) -> str:
    """``name`` the first time this process resolves ``auto`` to it; then ``name-2``, ``name-3``, ... (two
    submissions within one second must not share a repo)."""
    with _given_lock:
        candidate, n = name, 1
        while candidate in _given:
            n += 1
            candidate = f"{name}-{n}"
        _given.add(candidate)
    return candidate


_given: set[str] = set()  # the names ``auto`` was resolved to in this process
_given_lock = threading.Lock()


# Every numeric setting and its allowed range, checked before any model loads. The upper ends sit far above any
# useful value: they catch a typo (lora.r: 1e9) before it becomes an out-of-memory error an hour into a run.
RANGES = {
    "data.eval_fraction": Range(0, 1, high_open=True),
    "data.max_samples": Range(1, 1_000_000_000, "or empty for all rows"),
    "lora.r": Range(1, 1024, "typical: 8-64"),
    "lora.alpha": Range(1, 4096, "typical: 2 x r"),
    "lora.dropout": Range(0, 1, high_open=True),
    "training.learning_rate": Range(0, 1, "LoRA typical: 1e-4 to 3e-4", low_open=True),
    "training.beta": Range(0, 100, "typical: 0.01-0.5", low_open=True),
    "training.warmup_ratio": Range(0, 1, high_open=True),
    "training.epochs": Range(0, 1000, low_open=True),
    "training.max_steps": Range(1, 10_000_000, "or empty to use epochs"),
    "training.batch_size": Range(1, 4096),
    "training.grad_accum": Range(1, 4096),
    "training.max_length": Range(16, 131072, "Phi-3-mini-4k: up to 4096"),
    "training.weight_decay": Range(0, 10, "typical: 0-0.1"),
    "training.seed": Range(0, 2**32 - 1),
    "training.logging_steps": Range(1, 10_000_000),
    "training.eval_steps": Range(1, 10_000_000, "or empty to evaluate at each checkpoint"),
    "training.save_steps": Range(1, 10_000_000),
    "training.save_total_limit": Range(1, 1000),
}

# What other tools (transformers, trl, axolotl, ...) call our settings; checked before spelling suggestions.
ALIASES = {
    "lr": "training.learning_rate",
    "num_train_epochs": "training.epochs", "num_epochs": "training.epochs", "epoch": "training.epochs",
    "max_seq_length": "training.max_length", "max_seq_len": "training.max_length", "seq_len": "training.max_length",
    "sequence_len": "training.max_length", "cutoff_len": "training.max_length", "max_len": "training.max_length",
    "per_device_train_batch_size": "training.batch_size", "micro_batch_size": "training.batch_size",
    "train_batch_size": "training.batch_size",
    "gradient_accumulation_steps": "training.grad_accum", "gradient_accumulation": "training.grad_accum",
    "lr_scheduler_type": "training.lr_scheduler", "scheduler": "training.lr_scheduler",
    "warmup": "training.warmup_ratio", "warmup_steps": "training.warmup_ratio",
    "num_steps": "training.max_steps", "steps": "training.max_steps", "max_iters": "training.max_steps",
    "lora_r": "lora.r", "rank": "lora.r", "lora_rank": "lora.r",
    "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout", "lora_target_modules": "lora.target_modules",
    "model_name_or_path": "model.base", "base_model": "model.base", "model_name": "model.base",
    "model_id": "model.base",
    "load_in_4bit": "model.method", "quantization": "model.method",
    "dataset_name": "data.dataset", "dataset_path": "data.dataset", "train_file": "data.dataset",
    "dataset_config_name": "data.config_name", "subset": "data.config_name", "max_train_samples": "data.max_samples",
    "output_dir": "output.dir", "hub_model_id": "output.push_to", "repo_id": "output.push_to",
    "hub_private_repo": "output.private",
    "dpo_beta": "training.beta", "pref_beta": "training.beta", "pref_loss": "training.loss_type",
    "rl": "training.objective", "stage": "training.objective", "trainer": "training.objective",
    "adapter_name_or_path": "model.init_adapter", "lora_adapter": "model.init_adapter",
}


def _show(value: Any, limit: int = 60) -> str:
    """A value for a one-line message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _allowed_keys(cls: type[RunConfig] = RunConfig) -> list[str]:
    return [f"{s}.{f.name}" for s, part in section_classes(cls).items() for f in fields(part)]


def _validate(cfg: RunConfig) -> list[str]:
    p: list[str] = []
    m, d, lo, o = cfg.model, cfg.data, cfg.lora, cfg.output
    for section, cls in section_classes(type(cfg)).items():
        for f in fields(cls):
            choices = f.metadata.get("choices")
            value = getattr(getattr(cfg, section), f.name)
            if choices and value not in choices:
                p.append(f"{section}.{f.name}: {_show(value)} is not one of {', '.join(choices)}")
    for key, allowed in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            p.append(f"{key}: {value} is not a finite number; use a value in {allowed}")
        elif not allowed.allows(value):
            p.append(f"{key}: {_show(value)} is outside {allowed}" + (f" ({allowed.note})" if allowed.note else ""))
    if not m.base or not isinstance(m.base, str):
        p.append("model.base: required (a Hub ID such as microsoft/Phi-3-mini-4k-instruct, or a local folder)")
    if not d.dataset:
        p.append("data.dataset: required (a Hub dataset ID or a local JSON/JSONL/CSV/Parquet file)")
    p += [problem for key, ref in (("model.base", m.base), ("data.dataset", d.dataset), ("output.dir", o.dir),
                                   ("model.init_adapter", m.init_adapter or ""))
          if (problem := ref_problem(ref, key, hub=key != "output.dir")) and not looks_like_token(ref)]  # a token is reported on its own
    if not isinstance(d.columns, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in d.columns.items()):
        p.append("data.columns: expected a mapping of our column names to yours, e.g. {prompt: question}")
    tm = lo.target_modules
    if isinstance(tm, str) and "," in tm:
        lo.target_modules = tm = [x.strip() for x in tm.split(",") if x.strip()]
    if isinstance(tm, list):
        bad = [x for x in tm if x not in PHI3_TARGET_MODULES]
        if bad or not tm:
            p.append(f"lora.target_modules: {_show(bad or tm)} not Phi-3 linear layers; use all-linear or some of "
                     + ", ".join(PHI3_TARGET_MODULES) + " (Phi-3 fuses q/k/v into qkv_proj and gate/up into gate_up_proj)")
    elif tm != "all-linear":
        p.append(f"lora.target_modules: {_show(tm)}; use all-linear or a list of " + ", ".join(PHI3_TARGET_MODULES))
    if cfg.training.objective == "dpo" and cfg.training.packing:
        p.append("training.packing: packs SFT rows; DPO's pairs are not packed (set it to false)")
    if o.push_checkpoints and not o.push_to and not cfg.hub_only:  # (said by the subclass for those)
        p.append("output.push_checkpoints: needs output.push_to (the repo whose 'checkpoints' branch gets them)")
    if o.push_to and o.push_to != "auto" and not is_repo_id(o.push_to):
        p.append(f"output.push_to: {_show(o.push_to)} is not a repo ID like your-name/my-adapter (or 'auto')")
    return p + cfg.more_problems()

