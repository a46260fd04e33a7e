"""Hugging Face Jobs hardware: the flavors (GPUs, memory, price per hour, from ``list_jobs_hardware``) and a rough
time and cost estimate for a run on one, for the form's price tag and the plan under it."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

from phi3space.engine.estimates import MINI_PARAMS, tokens_per_s
from phi3space.errors import ConfigError
from phi3space.hub.errors import hub_error
from phi3space.jobs.spec import JobConfig, timeout_seconds


@dataclass(frozen=True)
class Flavor:
    """One Jobs hardware flavor, as list_jobs_hardware describes it."""

    name: str
    gpus: int
    gpu: str = ""  # accelerator model (A10G, L4, ...); "" for CPU flavors
    memory_gb: float | None = None  # GPU memory per GPU
    price_per_hour: float | None = None  # USD
    ram_gb: float | None = None  # the machine's memory

    def label(self) -> str:
        """'a10g-large · 1× A10G 24 GB · $1.50/h' (for the form's dropdown)."""
        parts = [self.name]
        if self.gpus:
            parts.append(f"{self.gpus}× {self.gpu or 'GPU'}" + (f" {self.memory_gb:g} GB" if self.memory_gb else ""))
        else:
            parts.append("CPU only")
        if self.price_per_hour is not None:
            parts.append(f"${self.price_per_hour:.2f}/h")
        return " · ".join(parts)


_PER_HOUR = {"second": 3600, "minute": 60, "hour": 1}


def gpus_in_name(name: str) -> int:
    """GPUs a flavor's name promises: 'a10g-largex2' -> 2, 'l4x4' -> 4, 'a10g-large' -> 1, 'cpu-basic' -> 0."""
    if name.startswith("cpu"):
        return 0
    m = re.search(r"x(\d+)$", name)
    return int(m.group(1)) if m else 1


def _flavor(info) -> Flavor:
    acc = info.accelerator
    gpus = int(acc.quantity) if acc is not None and str(acc.quantity).isdigit() else gpus_in_name(info.name)
    memory = None
    if acc is not None:
        m = re.match(r"([\d.]+)\s*GB", str(acc.vram or ""))
        # The Hub gives a flavor's total GPU memory (4x L4: 96 GB); each process of a data-parallel run has one GPU.
        memory = float(m.group(1)) / max(gpus, 1) if m else None
    per_hour = _PER_HOUR.get(str(info.unit_label).lower())
    price = round(info.unit_cost_usd * per_hour, 4) if per_hour and info.unit_cost_usd is not None else None
    ram = re.match(r"([\d.]+)\s*GB", str(getattr(info, "ram", "") or ""))
    return Flavor(info.name, gpus, acc.model if acc is not None else "", memory, price, float(ram.group(1)) if ram else None)


_hardware: tuple[float, list[Flavor]] | None = None
_hardware_lock = threading.Lock()
HARDWARE_TTL_S = 3600


def hardware(token: str | None = None) -> list[Flavor]:
    """The Jobs flavors with their prices (asked of the Hub at most once an hour). When the Hub cannot be asked,
    the flavor names huggingface_hub knows, without prices (and asked again a minute later)."""
    global _hardware
    with _hardware_lock:
        if _hardware and time.time() < _hardware[0]:
            return _hardware[1]
    from huggingface_hub import HfApi

    try:
        found = [_flavor(h) for h in HfApi().list_jobs_hardware(token=token or False)]
        ttl = HARDWARE_TTL_S
    except Exception as exc:
        if hub_error(exc, "list Jobs hardware") is None:
            raise
        from huggingface_hub import JobHardware

        found = [Flavor(h.value, gpus_in_name(h.value)) for h in JobHardware]
        ttl = 60
    with _hardware_lock:
        _hardware = (time.time() + ttl, found)
    return found


def find_flavor(name: str, token: str | None = None) -> Flavor:
    """The flavor called ``name``, or one made from its name when the Hub's list does not say (offline)."""
    return next((f for f in hardware(token) if f.name == name), Flavor(name, gpus_in_name(name)))


def check_flavor(name: str, token: str | None) -> Flavor:
    """Raises ConfigError when the Hub's list of flavors is known and ``name`` is not in it."""
    flavors = hardware(token)
    known = [f for f in flavors if f.price_per_hour is not None]
    if known and name not in {f.name for f in known}:
        gpus = [f.name for f in known if f.gpus]
        raise ConfigError([f"compute.flavor: {name!r} is not a Hugging Face Jobs hardware flavor"],
                          f"Use one of: {', '.join(gpus or [f.name for f in known])}.")
    return find_flavor(name, token)


def smallest_gpu_flavor(token: str | None = None) -> Flavor:
    """The cheapest flavor with one GPU or more (the first such when prices are unknown): an eval or export job's
    default when its run did not train on Jobs."""
    gpus = [f for f in hardware(token) if f.gpus]
    priced = [f for f in gpus if f.price_per_hour is not None]
    return min(priced, key=lambda f: f.price_per_hour) if priced else gpus[0]


def flavor_with_memory(needed_bytes: float, token: str | None = None) -> Flavor:
    """The cheapest flavor, GPU or not, whose machine has ``needed_bytes`` of memory (a GGUF export needs memory, not
    a GPU); the smallest GPU flavor when the Hub's list does not say (offline)."""
    fits = [f for f in hardware(token) if f.ram_gb and f.ram_gb * 1e9 >= needed_bytes and f.price_per_hour is not None]
    return min(fits, key=lambda f: f.price_per_hour) if fits else smallest_gpu_flavor(token)


DATA_PARALLEL_EFFICIENCY = 0.9
STARTUP_S = 10 * 60  # image pull, model download and load, before the first step


def flavor_tokens_per_s(flavor: Flavor, mean_length: float, method: str, params: float = MINI_PARAMS) -> float:
    """Training tokens/s of a LoRA (or QLoRA) run of a ``params``-sized model on ``flavor``, all its GPUs, for rows
    of ``mean_length`` tokens (engine.estimates' per-GPU figures; a flavor without a GPU: an A10G's)."""
    gpus = max(flavor.gpus, 1)
    per_gpu = tokens_per_s(flavor.gpu or "A10G", params, method, mean_length)
    return per_gpu * gpus * (DATA_PARALLEL_EFFICIENCY if gpus > 1 else 1)


@dataclass
class Estimate:
    """A training run's plan on one flavor: its hardware and price, the timeout, and the time it may take."""

    flavor: Flavor
    timeout_s: int
    hours: float | None  # training time, startup included; None when the steps are not known yet

    @property
    def cost(self) -> float | None:
        """The likely cost in dollars (the estimated time, at most the timeout); None when the price or time is unknown."""
        price = self.flavor.price_per_hour
        return None if price is None or self.hours is None else price * min(self.hours, self.timeout_s / 3600)

    @property
    def max_cost(self) -> float | None:
        """The most it can cost in dollars (the whole timeout); None when the price is unknown."""
        price = self.flavor.price_per_hour
        return None if price is None else price * self.timeout_s / 3600

    def warnings(self) -> list[str]:
        """What to change before Start: a timeout shorter than the run, a flavor without a GPU."""
        out = []
        if self.hours is not None and self.hours * 3600 > self.timeout_s:
            out.append(f"the run needs about {_hours(self.hours)} but compute.timeout stops it after "
                       f"{_hours(self.timeout_s / 3600)}: raise the timeout (a stopped run resumes from its last "
                       "pushed checkpoint).")
        if self.flavor.gpus == 0:
            out.append(f"{self.flavor.name} has no GPU: training a Phi-3 on CPUs would take days. Pick a GPU flavor.")
        return out

    def markdown(self) -> str:
        """The plan's line on the page: the flavor, the likely and the highest cost, billed to you (or that the price
        is unknown)."""
        head = f"**Hugging Face Jobs:** {self.flavor.label()}"
        if self.flavor.price_per_hour is None:
            return head + " · price unknown (the Hub's hardware list could not be read)"
        time_part = f" · about {_hours(self.hours)} → **about ${self.cost:.2f}**" if self.hours is not None else ""
        return head + time_part + f" · at most ${self.max_cost:.2f} (timeout {_hours(self.timeout_s / 3600)}), billed to you"


def _hours(h: float) -> str:
    return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h"


def estimate(cfg: JobConfig, rows: int | None = None, lengths: list[int] | None = None,
             token: str | None = None) -> Estimate:
    """Time and cost of ``cfg`` on its flavor, from the planned tokens and a per-GPU throughput table."""
    flavor = find_flavor(cfg.compute.flavor, token)
    t = cfg.training
    mean = min(sum(lengths) / len(lengths), t.max_length) if lengths else min(512, t.max_length)
    gpus = max(flavor.gpus, 1)
    if t.max_steps:
        tokens = t.max_steps * t.batch_size * t.grad_accum * gpus * mean
    elif rows:
        tokens = min(rows, cfg.data.max_samples or rows) * (1 - cfg.data.eval_fraction) * t.epochs * mean
    else:
        return Estimate(flavor, timeout_seconds(cfg.compute.timeout) or 0, None)
    speed = flavor_tokens_per_s(flavor, mean, cfg.model.method)
    return Estimate(flavor, timeout_seconds(cfg.compute.timeout) or 0, (STARTUP_S + tokens / speed) / 3600)
