"""A measured plan before the run: will it fit, how fast, how long, and what would it cost where.

``python -m phi3space plan CONFIG --json`` and the page's "Plan" run this. It probes the real training on this
machine (phi3space.engine.probe: a few steps of the run's own rows, its longest micro-batch among them, in a
training process of their own) and
reports the measured peak memory and tokens per second, whether the whole run fits here, and when it does not, the
first of the usual remedies that a probe shows to fit (half the micro-batch with twice the accumulation, so the
effective batch stays; gradient checkpointing; QLoRA). Then, for this machine and each Hugging Face Jobs GPU flavor,
the time and the price: here measured, elsewhere scaled from the measured probe by the hardware's relative
throughput (phi3space.jobs.hf.flavors), each with its error said.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

from phi3space.config import RunConfig
from phi3space.engine.probe import PROBE_STEPS, Lengths, Probe, available_memory_bytes, measure_lengths, run_probe

HEADROOM = 0.9  # a run fits when its measured peak is within this share of the memory there
MEASURED_ERROR = 0.25  # this machine: measured (bench/plan_probe.py compares the probe with the whole run)
SCALED_ERROR = 0.5  # another GPU: this probe scaled by published relative throughput
TABLE_ERROR = 1.0  # a GPU, measured on a CPU: the throughput table's figure for this row length, within a factor 2
MAX_TRIES = 3  # remedies probed when the run does not fit as set


def remedies(cfg: RunConfig, gpu: bool) -> list[dict]:
    """Settings that use less memory, in the order people try them: halve the micro-batch and double the
    accumulation (the effective batch stays) down to 1, then gradient checkpointing, then QLoRA (GPU only)."""
    t, out, changes = cfg.training, [], {}
    batch, accum = t.batch_size, t.grad_accum
    while batch > 1:
        batch, accum = max(1, batch // 2), accum * 2
        changes = {**changes, "training.batch_size": batch, "training.grad_accum": accum}
        out.append(dict(changes))
    if gpu and not t.gradient_checkpointing:
        changes = {**changes, "training.gradient_checkpointing": True}
        out.append(dict(changes))
    if gpu and cfg.model.method != "qlora":
        out.append({**changes, "model.method": "qlora"})
    return out


def trained_tokens(cfg: RunConfig, lengths: Lengths, gpus: int = 1) -> float:
    """Tokens the whole run trains: every row for each epoch, or max_steps steps of mean-length rows."""
    t = cfg.training
    if t.max_steps:
        mean = lengths.total / max(len(lengths.lengths), 1)
        return t.max_steps * t.batch_size * t.grad_accum * gpus * mean
    return lengths.total * t.epochs


def _fits(probe: Probe, available: int | None) -> bool:
    if not probe.ran:
        return False
    return available is None or probe.peak_memory_bytes is None or probe.peak_memory_bytes <= HEADROOM * available


def _here_name() -> str | None:
    from phi3space.engine.hardware import first_gpu_name

    return first_gpu_name()


def _speed_on(flavor, here_gpu: str | None, measured: float, cfg: RunConfig, mean_length: float) -> tuple[float, float]:
    """Tokens/s on ``flavor`` and the estimate's relative error."""
    from phi3space.engine.estimates import gpu_speed, model_size
    from phi3space.jobs.hf import flavors as F

    if here_gpu:  # measured on a GPU: scaled by the two GPUs' relative throughput (and the flavor's GPUs)
        gpus = max(flavor.gpus, 1)
        parallel = gpus * (F.DATA_PARALLEL_EFFICIENCY if gpus > 1 else 1)
        return measured * gpu_speed(flavor.gpu) / gpu_speed(here_gpu) * parallel, SCALED_ERROR
    return F.flavor_tokens_per_s(flavor, mean_length, cfg.model.method, model_size(cfg.model.base)[0]), TABLE_ERROR


def options(cfg: RunConfig, probe: Probe, tokens: float, fits_here: bool, here_gpu: str | None, mean_length: float,
            token: str | None = None) -> list[dict]:
    """Where the run could go: this machine (measured), then each Jobs GPU flavor (estimated), with time and price:
    those it fits on first, the cheapest first."""
    from phi3space.engine.estimates import estimate_memory_gb
    from phi3space.jobs.hf import flavors as F

    here, out = [], []
    if probe.ran:
        eta = (probe.startup_s or 0) + tokens / probe.tokens_per_s
        here.append({"flavor": "here", "hardware": here_gpu or "this machine's CPU", "eta_s": round(eta),
                    "tokens_per_s": round(probe.tokens_per_s, 1),
                    "cost_usd": None, "fits": fits_here, "measured": True, "error": MEASURED_ERROR})
    needed_gb = (probe.peak_memory_bytes / 1e9 if here_gpu and probe.peak_memory_bytes else estimate_memory_gb(cfg) * 1.074)
    for flavor in F.hardware(token):
        if not flavor.gpus:
            continue
        speed, error = _speed_on(flavor, here_gpu, probe.tokens_per_s or 0, cfg, mean_length)
        if speed <= 0:
            continue
        eta = F.STARTUP_S + tokens / speed
        price = flavor.price_per_hour
        out.append({"flavor": flavor.name, "hardware": flavor.label(), "eta_s": round(eta), "tokens_per_s": round(speed, 1),
                    "cost_usd": round(price * eta / 3600, 2) if price is not None else None,
                    "fits": flavor.memory_gb is None or needed_gb <= HEADROOM * flavor.memory_gb,
                    "measured": False, "error": error})
    out.sort(key=lambda o: (not o["fits"], o["cost_usd"] is None, o["cost_usd"] or 0, o["eta_s"]))  # cheapest first
    return here + out


def make_plan(cfg: RunConfig, token: str | None = None, steps: int = PROBE_STEPS, folder: Path | None = None,
              progress=None) -> dict:
    """Probe ``cfg`` here and plan it (the JSON ``plan --json`` prints). ``progress(text)`` hears each stage.

    Raises:
        DataError / ModelError / ConfigError: what the run itself would refuse (its data, its base, its settings).
    """
    say = progress or (lambda text: None)
    scratch = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="phi3space-plan-"))
    try:
        say("reading and measuring the training rows")
        lengths = measure_lengths(cfg, scratch, steps, token)
        available, source = available_memory_bytes()
        here_gpu = _here_name()
        say(f"probing {steps} steps of the run as set")
        tried = [run_probe(cfg, lengths, scratch, steps, None, token)]
        fits = _fits(tried[0], available)
        if not fits and (tried[0].out_of_memory or tried[0].ran):
            for changes in remedies(cfg, bool(here_gpu))[:MAX_TRIES]:
                say(f"probing with {changes}")
                tried.append(run_probe(cfg, lengths, scratch, steps, changes, token))
                if _fits(tried[-1], available):
                    break
        measured = next((p for p in tried if p.ran), tried[0])
        working = next((p for p in tried if _fits(p, available)), None)
        planned = _changed(cfg, working.changes) if working else cfg
        tokens = trained_tokens(planned, lengths)
        mean = lengths.total / max(len(lengths.lengths), 1)
        eta = (measured.startup_s or 0) + tokens / measured.tokens_per_s if measured.ran else None
        return {"peak_memory_bytes": measured.peak_memory_bytes, "tokens_per_s": _round(measured.tokens_per_s),
                "fits": fits, "eta_s": round(eta) if eta is not None else None,
                "memory_available_bytes": available, "memory_source": source, "hardware": here_gpu or "CPU",
                "rows": len(lengths.lengths), "tokens": round(tokens), "mean_row_tokens": round(mean, 1),
                "longest_row_tokens": max(lengths.lengths, default=0), "probe_steps": steps,
                "settings_that_fit": working.changes if working and working is not tried[0] else ({} if fits else None),
                "probes": [asdict(p) for p in tried],
                "options": options(planned, measured, tokens, fits or working is not None, here_gpu, mean, token)}
    finally:
        if folder is None:
            shutil.rmtree(scratch, ignore_errors=True)


def plan_run(cfg: RunConfig, token: str | None, writer=None, progress=None) -> dict:
    """``make_plan`` as a job (the page's Plan): its stages, then the plan, are ``writer``'s events (an EventWriter;
    None: none), and its end is the run's last word, completed, failed with what to fix, or cancelled."""
    if writer is None:
        return make_plan(cfg, token, progress=progress)
    with writer.stages("plan", on_stage=progress, adapter=None) as stage:
        plan = make_plan(cfg, token, progress=stage)
        writer.emit("plan", task="plan", **plan)
    return plan


def _changed(cfg: RunConfig, changes: dict) -> RunConfig:
    sections = {}
    for key, value in changes.items():
        section, name = key.split(".", 1)
        sections.setdefault(section, {})[name] = value
    return replace(cfg, **{s: replace(getattr(cfg, s), **v) for s, v in sections.items()})


def _round(x: float | None) -> float | None:
    return round(x, 1) if x is not None else None
