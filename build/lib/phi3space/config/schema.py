"""The run config's settings: one dataclass per section, each field declared once with ``fields.setting`` (its
default, help text, allowed values, the names other tools use for it, how the web form shows it); the tables read
elsewhere (``SETTINGS``, ``RANGES``, ``ALIASES``) are derived from those declarations. Also run and repo names and
the validation rules.

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

from phi3space.config.fields import aliases_of, ranges_of, setting, settings_of, value_at
from phi3space.config.objectives import OBJECTIVES, objective_of, objectives_help
from phi3space.errors import looks_like_token
from phi3space.ranges import Range
from phi3space.refs import is_repo_id, ref_problem

DEFAULT_BASE = "microsoft/Phi-3-mini-4k-instruct"
PHI3_TARGET_MODULES = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
METHODS = ("lora", "qlora")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
REPORT_TO = ("none", "trackio", "wandb")  # transformers' report_to names of the trackers a run may also log to
# trl's DPOConfig.loss_type values for a pair of answers (trl 1.16; 'sft' and the unpaired ones left out).
DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "apo_zero",
              "apo_down", "discopop", "sigmoid_norm")
# Sections of a run's file that another layer defines: ``compute`` (where and on what the run trains) is the job's
# spec, phi3space.jobs.spec's. A plain RunConfig read from a file keeps them as written (``RunConfig.elsewhere``), so
# that a run's config saved or pushed from below that layer keeps them too.
ELSEWHERE = ("compute",)
FILE_ORDER = ("model", "data", "lora", "training", "output", "compute", "logging")  # the sections' order in a file


@dataclass
class ModelConfig:
    """``model:``: the base checkpoint, how it is loaded, and the adapter a run may start from."""

    base: str = setting(DEFAULT_BASE, "Phi-3 / Phi-3.5 checkpoint: Hub ID or local folder.", group="main",
                        aliases=("model_name_or_path", "base_model", "model_name", "model_id"))
    method: str = setting("lora", "lora (16/32-bit base) or qlora (4-bit nf4 base).", choices=METHODS, group="main",
                          aliases=("load_in_4bit", "quantization"))
    attn_implementation: str = setting("auto", "auto, flash_attention_2, sdpa or eager.",
                                       choices=("auto", "flash_attention_2", "sdpa", "eager"), group="advanced")
    init_adapter: str | None = setting(
        None, "Start from this LoRA adapter (a run folder or a Hub adapter repo, e.g. your SFT run) instead of a new "
              "one; its rank and layers replace the lora settings.", group="lora",
        aliases=("adapter_name_or_path", "lora_adapter"), placeholder="empty: a new adapter; e.g. you/my-sft-adapter")


@dataclass
class DataConfig:
    """``data:``: which rows to train and evaluate on, and how their columns are named."""

    dataset: str = setting("", "Hub dataset ID, or a local JSON/JSONL/CSV/Parquet file or folder.", group="main",
                           aliases=("dataset_name", "dataset_path", "train_file"))
    config_name: str | None = setting(None, "Hub dataset configuration (subset) name.",
                                      aliases=("dataset_config_name", "subset"),
                                      placeholder="empty: the default configuration")
    revision: str | None = setting(None, "Hub dataset revision: a commit hash, branch or tag (empty: the latest). A run "
                                         "records the commit it read here, so that it can be repeated.",
                                   placeholder="empty: the latest")
    split: str = setting("train", "Split to train on.")
    eval_split: str | None = setting(None, "Split to evaluate on; when empty, eval_fraction of the training rows is "
                                           "held out.", placeholder="empty: hold out the eval fraction")
    eval_fraction: float = setting(0.1, "Share of training rows held out for evaluation when there is no eval_split "
                                        "(0 = none).", range=Range(0, 1, high_open=True), step=0.01)
    max_samples: int | None = setting(None, "Use at most this many training rows (after cleaning).",
                                      range=Range(1, 1_000_000_000, "or empty for all rows"),
                                      aliases=("max_train_samples",), placeholder="empty: all rows")
    columns: dict = setting({}, "Map our names to yours, e.g. {prompt: question, completion: answer} or "
                                "{messages: dialog}.", placeholder="e.g. prompt: question, completion: answer")


@dataclass
class LoraSettings:
    """``lora:``: the adapter's shape (peft's LoraConfig: r, lora_alpha, lora_dropout, target_modules)."""

    r: int = setting(16, "LoRA rank.", range=Range(1, 1024, "typical: 8-64"), aliases=("lora_r", "rank", "lora_rank"))
    alpha: int = setting(32, "LoRA alpha (scale = alpha / r).", range=Range(1, 4096, "typical: 2 x r"),
                         aliases=("lora_alpha",))
    dropout: float = setting(0.05, "Dropout on the LoRA path, in [0, 1).", range=Range(0, 1, high_open=True), step=0.01,
                             aliases=("lora_dropout",))
    target_modules: Any = setting("all-linear", "all-linear, or a list of Phi-3 linear layers: "
                                  + ", ".join(PHI3_TARGET_MODULES), aliases=("lora_target_modules",))


@dataclass
class TrainingConfig:
    """``training:``: the objective and trl's training arguments (most under trl's own names)."""

    objective: str = setting("sft", objectives_help(), choices=tuple(OBJECTIVES), group="main",
                             aliases=("rl", "stage", "trainer"))
    learning_rate: float = setting(2e-4, "Peak learning rate (LoRA, not full fine-tuning).",
                                   range=Range(0, 1, "LoRA typical: 1e-4 to 3e-4", low_open=True), step=1e-5,
                                   aliases=("lr",))
    lr_scheduler: str = setting("cosine", "Learning-rate schedule.", choices=SCHEDULERS,
                                aliases=("lr_scheduler_type", "scheduler"))
    warmup_ratio: float = setting(0.03, "Share of steps spent warming up, in [0, 1).", range=Range(0, 1, high_open=True),
                                  step=0.01, aliases=("warmup", "warmup_steps"))
    epochs: float = setting(1.0, "Passes over the training rows (ignored when max_steps is set).",
                            range=Range(0, 1000, low_open=True), step=0.5,
                            aliases=("num_train_epochs", "num_epochs", "epoch"))
    max_steps: int | None = setting(None, "Stop after this many optimizer steps (overrides epochs).",
                                    range=Range(1, 10_000_000, "or empty to use epochs"),
                                    aliases=("num_steps", "steps", "max_iters"), placeholder="empty: use epochs")
    batch_size: int = setting(4, "Rows per device per step.", range=Range(1, 4096),
                              aliases=("per_device_train_batch_size", "micro_batch_size", "train_batch_size"))
    grad_accum: int = setting(4, "Gradient accumulation steps (effective batch = batch_size x grad_accum x GPUs).",
                              range=Range(1, 4096), aliases=("gradient_accumulation_steps", "gradient_accumulation"))
    max_length: int = setting(2048, "Tokens per row; longer rows are truncated.",
                              range=Range(16, 131072, "Phi-3-mini-4k: up to 4096"),
                              aliases=("max_seq_length", "max_seq_len", "seq_len", "sequence_len", "cutoff_len",
                                       "max_len"))
    weight_decay: float = setting(0.0, "AdamW weight decay.", range=Range(0, 10, "typical: 0-0.1"), step=0.01)
    seed: int = setting(42, "Random seed (data order, LoRA init, eval split).", range=Range(0, 2**32 - 1))
    beta: float = setting(0.1, "dpo: how far the adapter may move from the reference (higher: closer to it).",
                          range=Range(0, 100, "typical: 0.01-0.5", low_open=True), step=0.01,
                          aliases=("dpo_beta", "pref_beta"))
    loss_type: str = setting("sigmoid", "dpo: trl's preference loss (sigmoid is DPO's own; ipo, hinge, robust, ...).",
                             choices=DPO_LOSSES, aliases=("pref_loss",))
    logging_steps: int = setting(5, "Write a progress event every N steps.", range=Range(1, 10_000_000),
                                 group="advanced")
    eval_steps: int | None = setting(None, "Evaluate every N steps (default: at each checkpoint).",
                                     range=Range(1, 10_000_000, "or empty to evaluate at each checkpoint"),
                                     group="advanced", placeholder="empty: at each checkpoint")
    early_stopping_patience: int | None = setting(
        None, "Stop when the eval loss has not improved for this many evaluations in a row, and keep the adapter of "
              "the best one (needs eval rows; evaluations are at each checkpoint unless eval_steps says otherwise).",
        range=Range(1, 1000, "or empty to train to the end"), group="advanced", aliases=("patience",),
        placeholder="empty: train to the end")
    save_steps: int = setting(100, "Save a checkpoint every N steps.", range=Range(1, 10_000_000), group="advanced")
    save_total_limit: int = setting(2, "Checkpoints kept in the run folder.", range=Range(1, 1000), group="advanced")
    gradient_checkpointing: bool = setting(True, "Trade compute for memory (GPU only; off on CPU).", group="advanced")
    packing: bool = setting(False, "Pack short rows into max_length sequences (fewer, fuller steps; rows stay apart "
                                   "with flash-attention, sdpa or eager).", group="advanced")


@dataclass
class OutputConfig:
    """``output:``: the run folder and the Hub repo the adapter (and its checkpoints) go to."""

    dir: str = setting("", "Run folder (default: runs/<base>-<dataset>-<method>).", group=None,  # the server's choice
                       aliases=("output_dir",))
    push_to: str | None = setting(None, "Hub repo for the adapter (user/name), or 'auto' for "
                                        "<you>/<base>-<dataset>-<method>-<date>-<time> (a new repo per run).",
                                  aliases=("hub_model_id", "repo_id"), placeholder="you/my-adapter")
    private: bool = setting(True, "Create the Hub repo as private.", aliases=("hub_private_repo",))
    push_checkpoints: bool = setting(False, "Also push each checkpoint (to the repo's 'checkpoints' branch).")
    general_check: bool = setting(True, "Before the push, ask base and adapter the app's general questions (a few "
                                        "dozen short ones: arithmetic, facts, language, code) and show what the "
                                        "adapter lost or gained.")
    general_margin: float = setting(0.1, "Hold the push when the adapter gets this share of the general questions "
                                         "fewer right than its base.", range=Range(0, 1), step=0.05)
    push_if_worse: bool = setting(False, "Push even when the adapter lost more than general_margin on the general "
                                         "questions (the CLI's --push-anyway).")



@dataclass
class LoggingConfig:
    """``logging:``: the experiment tracker a run also logs to."""

    report_to: str = setting("none", "Also log the run to an experiment tracker, as transformers' report_to: none, "
                                     "trackio (Hugging Face's tracker; a local dashboard, or a Space with "
                                     "TRACKIO_SPACE_ID) or wandb (Weights & Biases; WANDB_API_KEY or wandb login). No "
                                     "token is put in its config.", choices=REPORT_TO, group="advanced")


@dataclass
class RunConfig:
    """A whole run: every section's settings. Build it with ``phi3space.config.load``/``loads``/``from_dict``, which
    validate it (a RunConfig made directly holds the defaults and is not checked)."""

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
        """What other tools call this class's settings (ALIASES, plus those declared in a subclass's sections)."""
        return ALIASES if cls is RunConfig else aliases_of(settings_of(section_classes(cls)))

    def more_problems(self) -> list[str]:
        """What a subclass checks besides the recipe (its own sections), reported with the rest."""
        return []

    def to_dict(self) -> dict:
        """Every section as plain data (the YAML file's layout), the sections kept from elsewhere included."""
        out = {name: dataclasses.asdict(getattr(self, name)) for name in section_classes(type(self))}
        out.update((k, v) for k, v in self.elsewhere.items() if k not in out)
        return dict(sorted(out.items(), key=lambda kv: _order(kv[0])))

    def to_yaml(self) -> str:
        """The settings as YAML, in declaration order: what is saved beside the run and pushed with the adapter."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write ``to_yaml()`` to ``path``."""
        Path(path).write_text(self.to_yaml(), encoding="utf-8")

    @property
    def run_dir(self) -> Path:
        """The run folder (``output.dir``)."""
        return Path(self.output.dir)


def section_classes(cls: type[RunConfig] = RunConfig) -> dict[str, type]:
    """A config class's sections: name -> dataclass, in the file's order."""
    found = {f.name: type(f.default_factory()) for f in fields(cls) if f.name != "elsewhere"}
    return dict(sorted(found.items(), key=lambda kv: _order(kv[0])))


def _order(section: str) -> int:
    return FILE_ORDER.index(section) if section in FILE_ORDER else len(FILE_ORDER)


_SECTION_CLASSES = section_classes(RunConfig)

SETTINGS = settings_of(_SECTION_CLASSES)  # 'section.name' -> its field (help and all in its metadata)
# Every numeric setting's allowed range, checked before any model loads. The upper ends sit far above any useful
# value: they catch a typo (lora.r: 1e9) before it becomes an out-of-memory error an hour into a run.
RANGES = ranges_of(SETTINGS)
# What other tools (transformers, trl, axolotl, ...) call our settings; checked before spelling suggestions.
ALIASES = aliases_of(SETTINGS)


def short_name(ref: str) -> str:
    """'microsoft/Phi-3-mini-4k-instruct' -> 'phi-3-mini-4k-instruct'; './data/qa.jsonl' -> 'qa'."""
    name = ref.rstrip("/").split("/")[-1]
    name = re.sub(r"\.(jsonl?|csv|parquet)$", "", name)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-").lower() or "run"


def default_run_name(cfg: RunConfig) -> str:
    """The run's name when none is given: <base>-<dataset>-<method> (with -dpo for a DPO run)."""
    name = f"{short_name(cfg.model.base)}-{short_name(cfg.data.dataset)}-{cfg.model.method}"
    return name + objective_of(cfg).run_suffix


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


def _show(value: Any, limit: int = 60) -> str:
    """A value for a one-line message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _allowed_keys(cls: type[RunConfig] = RunConfig) -> list[str]:
    """Every setting's key of ``cls``'s sections, 'section.name'."""
    return list(settings_of(section_classes(cls)))


def _validate(cfg: RunConfig) -> list[str]:
    """Every problem with ``cfg``'s values, one line each, named by key (empty when it is valid); normalises
    ``lora.target_modules`` written as 'a, b' on the way (a subclass checks its own sections: more_problems)."""
    p: list[str] = []
    m, d, lo, o = cfg.model, cfg.data, cfg.lora, cfg.output
    for key, f in settings_of(section_classes(type(cfg))).items():
        choices = f.metadata.get("choices")
        value = value_at(cfg, key)
        if choices and value not in choices:
            p.append(f"{key}: {_show(value)} is not one of {', '.join(choices)}")
    for key, allowed in RANGES.items():
        value = value_at(cfg, key)
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
    if cfg.training.objective in OBJECTIVES:  # (an unknown one is reported above)
        p += objective_of(cfg).problems(cfg)
    t = cfg.training
    if t.early_stopping_patience and not (d.eval_split or (d.eval_fraction or 0) > 0):
        p.append("training.early_stopping_patience: needs eval rows to watch (data.eval_fraction above 0, or "
                 "data.eval_split)")
    elif t.early_stopping_patience and t.eval_steps and t.save_steps % t.eval_steps:
        p.append(f"training.early_stopping_patience: needs training.save_steps ({t.save_steps}) to be a multiple of "
                 f"training.eval_steps ({t.eval_steps}), so that the best evaluation has its checkpoint to keep")
    if o.push_checkpoints and not o.push_to and not cfg.hub_only:  # (said by the subclass for those)
        p.append("output.push_checkpoints: needs output.push_to (the repo whose 'checkpoints' branch gets them)")
    if o.push_to and o.push_to != "auto" and not is_repo_id(o.push_to):
        p.append(f"output.push_to: {_show(o.push_to)} is not a repo ID like your-name/my-adapter (or 'auto')")
    return p + cfg.more_problems()

