"""A measured plan's probe: a few steps of the real training, on the run's own rows, on this machine.

The probe is the real thing, not a model of it: ``python -m phi3space train`` in its own process (as a job runs), on
a config that differs from the user's only in its rows (its longest micro-batch, and others drawn at random, enough
for ``steps`` optimizer steps with the run's micro-batch and accumulation), its step count, and in keeping nothing
(no eval, no checkpoint, no push, no tracker, a throw-away folder). What it measures comes back through the run's
events, as for any run: each progress event carries the tokens trained so far, the time, and the process's peak
memory (``engine.memory.peak_memory_bytes``: the CUDA allocator's peak on a GPU, the process's peak resident memory
on a CPU). Its own process also means an out-of-memory probe (a CUDA error, or the kernel's OOM killer on a CPU) is
a measured "does not fit", not a crash of the plan.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from phi3space.config import RunConfig
from phi3space.run import RunDir

PROBE_STEPS = 6  # the first step warms up (kernels, allocator) and is not timed
PROBE_TIMEOUT_S = 1800


@dataclass
class Lengths:
    """The run's training rows' token lengths (each capped at max_length), and the file of the probe's rows."""

    lengths: list[int]
    rows: Path

    @property
    def total(self) -> int:
        """Tokens in all the training rows (each capped at max_length)."""
        return sum(self.lengths)


@dataclass
class Probe:
    """What a probe measured with one set of settings (``changes``: the settings that differ from the run's)."""

    changes: dict = field(default_factory=dict)
    peak_memory_bytes: int | None = None
    tokens_per_s: float | None = None
    startup_s: float | None = None
    steps: int = 0
    problem: str | None = None  # why it did not finish (out of memory, an error), in the run's words
    out_of_memory: bool = False
    step_s: tuple[float, float] | None = None  # an optimizer step's time: (fixed seconds, seconds per token)

    def speed_at(self, step_tokens: float) -> float | None:
        """Tokens/s of steps of ``step_tokens`` tokens each (the run's mean): the probe mixes the longest micro-batch
        into its few steps, and a step has a fixed cost besides its tokens (large for a small model on a CPU), so
        its own mean speed would not be the run's."""
        if self.step_s is None or step_tokens <= 0:
            return self.tokens_per_s
        fixed, per_token = self.step_s
        return step_tokens / (fixed + per_token * step_tokens)

    @property
    def ran(self) -> bool:
        """It trained its steps and was timed."""
        return self.problem is None and self.tokens_per_s is not None


def rows_per_step(cfg: RunConfig) -> int:
    """Rows one optimizer step takes: micro-batch x accumulation (per process)."""
    return cfg.training.batch_size * cfg.training.grad_accum


def measure_lengths(cfg: RunConfig, folder: Path, steps: int = PROBE_STEPS, token: str | None = None) -> Lengths:
    """Read, normalise and tokenise the run's training rows as training does, and write the probe's rows to
    ``folder``/probe.jsonl: the longest micro-batch (the worst batch the run will meet: its peak memory) and rows
    drawn at random from the rest (the run's mix of lengths: its speed), enough for ``steps`` steps.

    Raises:
        DataError: as training would (no such dataset, no usable rows).
    """
    import random

    from phi3space.engine.data import prepare
    from phi3space.engine.modeling import load_tokenizer
    from phi3space.engine.tokens import tokenize

    rows, _, _ = prepare(cfg.data, cfg.training.seed, token)
    tokenizer = load_tokenizer(cfg.model.base, token)
    measured = tokenize(rows, tokenizer, cfg.training.max_length)
    lengths = [min(n, cfg.training.max_length) for n in measured["tokens"]]
    by_length = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    worst, rest = by_length[: cfg.training.batch_size], by_length[cfg.training.batch_size:]
    wanted = max(rows_per_step(cfg) * steps - len(worst), 0)
    drawn = random.Random(cfg.training.seed).sample(rest, min(wanted, len(rest)))
    probe_rows = folder / "probe.jsonl"
    rows.select(worst + drawn).to_json(str(probe_rows), lines=True, force_ascii=False)
    return Lengths(lengths, probe_rows)


def probe_config(cfg: RunConfig, rows: Path, out: Path, steps: int, changes: dict | None = None) -> dict:
    """The user's config as a probe runs it: their settings (with ``changes``, {"section.name": value}), the probe's
    rows, ``steps`` steps, and nothing kept (no eval, no checkpoint, no push, no tracker)."""
    d = cfg.to_dict()
    d.pop("compute", None)  # it runs here, as a process of its own
    d["data"].update(dataset=str(rows), config_name=None, split="train", eval_split=None, eval_fraction=0,
                     max_samples=None, columns={})
    d["training"].update(max_steps=steps, logging_steps=1, save_steps=10 * steps, eval_steps=None)
    d["output"].update(dir=str(out), push_to=None, push_checkpoints=False)
    d["logging"]["report_to"] = "none"
    for key, value in (changes or {}).items():
        section, name = key.split(".", 1)
        d[section][name] = value
    return d


def run_probe(cfg: RunConfig, lengths: Lengths, folder: Path, steps: int = PROBE_STEPS, changes: dict | None = None,
              token: str | None = None, timeout_s: float = PROBE_TIMEOUT_S) -> Probe:
    """Train ``steps`` steps of the probe's rows in a process of its own and read what its events measured."""
    from phi3space.hub.auth import token_env

    name = "-".join(f"{k.split('.')[-1]}{v}" for k, v in sorted((changes or {}).items())) or "as-set"
    out = Path(tempfile.mkdtemp(prefix=f"probe-{name}-", dir=folder))
    config_file = out.with_suffix(".yaml")
    config_file.write_text(yaml.safe_dump(probe_config(cfg, lengths.rows, out, steps, changes), sort_keys=False))
    started = time.time()
    env = {**token_env(token, space=False), "PHI3SPACE_PROBE": "1"}
    with open(out.with_suffix(".log"), "wb") as log:
        try:
            code = subprocess.run([sys.executable, "-m", "phi3space", "train", str(config_file)], stdout=log,
                                  stderr=subprocess.STDOUT, env=env, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            return Probe(changes or {}, problem=f"the probe did not finish {steps} steps in {timeout_s:.0f} s")
    said = out.with_suffix(".log").read_text(errors="replace").splitlines()
    refusal = next((line.removeprefix("error: ") for line in reversed(said) if line.startswith("error: ")), None)
    probe = read_probe(RunDir(out), started, code, changes or {}, refusal)
    if probe.ran:  # the speed of the run's own steps: its micro-batch and accumulation, rows of its mean length
        step_rows = probe_config(cfg, lengths.rows, out, steps, changes)["training"]
        mean = lengths.total / max(len(lengths.lengths), 1)
        probe.tokens_per_s = probe.speed_at(step_rows["batch_size"] * step_rows["grad_accum"] * mean)
    return probe


def read_probe(run: RunDir, started: float, exit_code: int, changes: dict, refusal: str | None = None) -> Probe:
    """A probe's measurements from its run's events (``started``: when its process was started; ``refusal``: the
    error line the CLI printed, for a run refused before it left events, such as one that cannot load here)."""
    events, _ = run.read_events() if run.events.exists() else ([], 0)
    progress = [e for e in events if e.get("type") == "progress" and e.get("tokens") is not None]
    peak = max((e.get("peak_memory_bytes") or 0 for e in events), default=0) or None
    probe = Probe(changes, peak_memory_bytes=peak, steps=len(progress))
    if progress:
        probe.startup_s = max(0.0, progress[0]["time"] - progress[0]["elapsed_s"] - started)
    timed = progress[1:]  # from the end of the first (warm-up) step
    if len(timed) >= 1 and timed[-1]["elapsed_s"] > progress[0]["elapsed_s"]:
        probe.tokens_per_s = (timed[-1]["tokens"] - progress[0]["tokens"]) / (timed[-1]["elapsed_s"] - progress[0]["elapsed_s"])
        probe.step_s = step_time(progress)
    error = next((e.get("error") for e in reversed(events) if e.get("type") == "run_finished" and e.get("error")), None)
    if error:
        probe.problem = error.get("message") or error.get("kind")
        probe.out_of_memory = error.get("kind") == "oom"
    elif exit_code in (-9, 137):
        probe.problem, probe.out_of_memory = "the probe was killed (out of memory on this machine)", True
    elif refusal:  # refused before training (its base cannot load here): a smaller batch would not change that
        probe.problem = refusal
    elif exit_code != 0 or probe.tokens_per_s is None:
        probe.problem = f"the probe ended with exit code {exit_code} before it could be timed (see its log)"
    return probe


def step_time(progress: list[dict]) -> tuple[float, float] | None:
    """A least-squares line through the timed steps' (tokens, seconds): an optimizer step's fixed seconds and its
    seconds per token; None when the steps do not tell them apart (too few, all alike, or a line that runs
    backwards, as noise can make it)."""
    steps = [(b["tokens"] - a["tokens"], b["elapsed_s"] - a["elapsed_s"]) for a, b in zip(progress, progress[1:])]
    if len(steps) < 3:
        return None
    n = len(steps)
    mean_x, mean_y = sum(x for x, _ in steps) / n, sum(y for _, y in steps) / n
    spread = sum((x - mean_x) ** 2 for x, _ in steps)
    if spread <= 0:
        return None
    per_token = sum((x - mean_x) * (y - mean_y) for x, y in steps) / spread
    fixed = mean_y - per_token * mean_x
    return (fixed, per_token) if fixed >= 0 and per_token > 0 else None


def available_memory_bytes() -> tuple[int | None, str]:
    """What the run may use here: the first GPU's memory when there is one (nvidia-smi, as the rest of the app asks),
    else this machine's available memory."""
    from phi3space.engine.hardware import gpus
    from phi3space.engine.memory import available_bytes

    found = gpus()
    if found:
        return int(found[0].total_gb * 2**30), f"{found[0].name} memory"
    return available_bytes()
