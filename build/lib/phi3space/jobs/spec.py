"""A job's spec: what it trains (the config layer's RunConfig, the recipe) and where and on what it runs (the
``compute:`` section of the same YAML file, defined here), with the registry of backends it may name.

The config layer knows a ``compute:`` section exists (``config.ELSEWHERE``) and keeps it as written; it knows no
backend. ``JobConfig`` is a RunConfig with that section typed and checked against the backends, loaded from the
same file in the same format (``load``, ``loads``, ``from_dict``), every problem reported at once.

A new backend is one module with a ``Backend`` subclass (phi3space.jobs.backend) that describes itself (label,
billed, its options and limits), plus one line in ``BACKENDS``.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from phi3space import config
from phi3space.config import RunConfig
from phi3space.config.fields import setting, settings_of
from phi3space.config.schema import _show

# compute.backend -> the class that runs jobs there ("module:class", imported when first asked).
BACKENDS = {
    "local": "phi3space.jobs.local:LocalBackend",
    "hf-jobs": "phi3space.jobs.hf.backend:HFJobsBackend",
}
DEFAULT_BACKEND = next(iter(BACKENDS))


@cache
def backend_class(name: str) -> type:
    """The Backend subclass (phi3space.jobs.backend) registered as ``name`` (KeyError for a name not in BACKENDS)."""
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def backend_classes() -> dict[str, type]:
    """Every backend, by name, in the registry's order (the page's choices)."""
    return {name: backend_class(name) for name in BACKENDS}


# A job's time limit: a number of seconds, or a number with s, m, h or d (the forms huggingface_hub's run_job takes).
_TIMEOUT = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
TIMEOUT_RANGE_S = (60, 7 * 86400)


def timeout_seconds(text: str | int | float) -> int | None:
    """'90m' -> 5400, '4h' -> 14400, '3600' -> 3600; None when it is not a duration."""
    m = _TIMEOUT.fullmatch(str(text).strip().lower())
    return int(float(m.group(1)) * _UNIT_S[m.group(2)]) if m else None


@dataclass
class ComputeConfig:
    """Where and on what a run trains: the ``compute:`` section."""

    backend: str = setting(DEFAULT_BACKEND, "Where the run trains: local (this machine's GPUs, in the app's queue) or "
                                            "hf-jobs (a Hugging Face Job on rented hardware, billed to you; needs "
                                            "output.push_to).", choices=tuple(BACKENDS))
    flavor: str = setting("a10g-large", "Hugging Face Jobs hardware for hf-jobs, e.g. l4x1, a10g-large, a100-large; "
                                       "several GPUs (a10g-largex2, l4x4, h200x8) train data-parallel with accelerate.",
                          aliases=("hardware", "gpu", "instance_type"))
    timeout: str = setting("4h", "hf-jobs: the job is stopped after this long (s, m, h or d; e.g. 90m, 6h), which "
                                 "also caps its cost; Resume continues from the last pushed checkpoint.")
    gpus: str = setting("1", "local, in the app's queue: GPUs (slots) the run takes, 1, N or all; more than one trains "
                             "data-parallel under accelerate launch. (hf-jobs: the flavor decides; CLI: accelerate "
                             "launch.)")

    def problems(self, push_to: str | None) -> list[str]:
        """What is wrong with these settings (a run pushing to ``push_to``); the timeout is respelled the one way the
        Jobs client reads it ('4H' -> '4h', '90 m' -> '90m', '5400.5' -> '5400')."""
        p = []
        if not isinstance(self.flavor, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,40}", self.flavor or ""):
            p.append(f"compute.flavor: {_show(self.flavor)} is not a Jobs hardware name like a10g-large or l4x1")
        seconds = timeout_seconds(self.timeout)
        low, high = TIMEOUT_RANGE_S
        if seconds is None:
            p.append(f"compute.timeout: {_show(self.timeout)} is not a duration; write e.g. 90m, 4h or 1d")
        elif not low <= seconds <= high:
            p.append(f"compute.timeout: {_show(self.timeout)} is outside 1m to 7d")
        else:
            m = _TIMEOUT.fullmatch(str(self.timeout).strip().lower())
            self.timeout = f"{m.group(1)}{m.group(2)}" if m.group(2) else str(seconds)
        if not re.fullmatch(r"all|[1-9]\d?", str(self.gpus)):
            p.append(f"compute.gpus: {_show(self.gpus)} is not 1, a number of GPUs or all")
        if self.backend in BACKENDS and backend_class(self.backend).needs_hub_destination and not push_to:
            p.append(f"compute.backend: {self.backend} needs output.push_to (the job's disk is gone when it ends: the "
                     "adapter must go to the Hub); e.g. output.push_to: auto")
        return p


@dataclass
class JobConfig(RunConfig):
    """A RunConfig and where it runs (``compute``): what a training job is submitted with, saved in its run folder
    and pushed with its adapter as one YAML file."""

    compute: ComputeConfig = field(default_factory=ComputeConfig)

    @property
    def hub_only(self) -> bool:
        """Its backend keeps nothing once the job ends (checkpoints go to the Hub unless told otherwise)."""
        return self.compute.backend in BACKENDS and backend_class(self.compute.backend).needs_hub_destination

    def more_problems(self) -> list[str]:
        """The compute section's problems."""
        return self.compute.problems(self.output.push_to)


def from_dict(raw: dict | None, overrides: list[str] | tuple[str, ...] = (), defaults: dict | None = None) -> JobConfig:
    """``config.from_dict`` with the compute section read and checked (ConfigError: every problem at once)."""
    return config.from_dict(raw, overrides, defaults, cls=JobConfig)


def load(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """``config.load`` with the compute section read and checked."""
    return config.load(path, overrides, cls=JobConfig)


def loads(text: str, overrides: list[str] | tuple[str, ...] = (), defaults: dict | None = None) -> JobConfig:
    """``config.loads`` with the compute section read and checked."""
    return config.loads(text, overrides, defaults, cls=JobConfig)


def of(cfg: RunConfig) -> JobConfig:
    """``cfg`` as a JobConfig: itself; with the default compute section when it kept none (its sections shared, not
    copied); else read again, with the compute section it kept as written checked.

    Raises:
        ConfigError: the compute section it kept is wrong.
    """
    if isinstance(cfg, JobConfig):
        return cfg
    if not cfg.elsewhere.get("compute"):
        return JobConfig(**{name: getattr(cfg, name) for name in config.section_classes(RunConfig)})
    return from_dict(cfg.to_dict())


def reference() -> str:
    """The run config reference with the compute section (the README's; ``python -m phi3space config``)."""
    return config.reference(JobConfig)


SECTIONS = config.section_classes(JobConfig)  # every section of a job's file, by name
SETTINGS = settings_of(SECTIONS)  # every setting of a job's file, 'section.name' -> its field (the web form's)
