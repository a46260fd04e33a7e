"""What this machine and platform really offer, and what that means for a job.

* the GPUs ``nvidia-smi`` sees (names, free memory) and whether the installed torch can use them: a Space whose
  torch wheel was built for a newer CUDA than its driver would otherwise train on the CPU while the form shows a
  GPU, so that is refused, loudly, at start and at submit;
* ZeroGPU (``SPACES_ZERO_GPU``, as gradio reads it): a GPU only inside ``@spaces.GPU`` calls, so chat works and
  training does not;
* rough training times (for the sign-in expiry check) and the idle pause of a GPU Space (``pause_space``);
* whether a folder lies on a FUSE mount (a Storage Bucket), where SQLite must never live.

The web server never imports torch for any of this: nvidia-smi answers, and torch is asked once, in a subprocess.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import ConfigError, ModelError, Phi3SpaceError, scrub

ALLOW_CPU_ENV = "PHI3SPACE_ALLOW_CPU"  # "1": train on the CPU even though nvidia-smi sees a GPU


def zero_gpu() -> bool:
    """A ZeroGPU Space (gradio's own test)."""
    return os.environ.get("SPACES_ZERO_GPU") == "true"


def gpu_count() -> int:
    """GPUs on this machine (nvidia-smi -L); 0 when none."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


@dataclass
class GPU:
    index: int
    name: str
    total_gb: float
    free_gb: float
    driver: str


def gpus() -> list[GPU]:
    """What nvidia-smi says about each GPU now (free memory changes: not cached); [] without nvidia-smi."""
    query = "index,name,memory.total,memory.free,driver_version"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            found.append(GPU(int(parts[0]), parts[1], float(parts[2]) / 1024, float(parts[3]) / 1024, parts[4]))
        except (IndexError, ValueError):
            continue
    return found


_PROBE = ("import json, torch; print(json.dumps({'version': torch.__version__, 'cuda': torch.version.cuda, "
          "'available': torch.cuda.is_available(), 'count': torch.cuda.device_count()}))")


@lru_cache(maxsize=1)
def torch_cuda() -> dict:
    """What the installed torch says about CUDA, asked in a subprocess (once per process)."""
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        return {"version": "?", "cuda": None, "available": False, "count": 0, "error": scrub(str(exc))[:200]}


def cuda_mismatch(seen: int, torch_version: str, torch_cuda_version: str | None, driver: str | None = None) -> ModelError:
    """The error for a GPU that nvidia-smi sees and torch cannot use."""
    build = f"built for CUDA {torch_cuda_version}" if torch_cuda_version else "a CPU-only build"
    on = f" (driver {driver})" if driver else ""
    return ModelError(f"nvidia-smi sees {seen} GPU{'s' if seen != 1 else ''}{on}, but torch {torch_version} ({build}) "
                      "cannot use it: training would run on the CPU",
                      "Install a torch build for this driver's CUDA version (on a Space, pre-requirements.txt pins "
                      "one from the PyTorch wheel index), or set PHI3SPACE_ALLOW_CPU=1 to train on the CPU anyway.")


def gpu_problem() -> ModelError | None:
    """A GPU that nvidia-smi sees and the installed torch cannot use (None when all is well, on ZeroGPU, or when
    PHI3SPACE_ALLOW_CPU=1)."""
    if zero_gpu() or os.environ.get(ALLOW_CPU_ENV) == "1":
        return None
    seen = gpu_count()
    if not seen:
        return None
    probe = torch_cuda()
    if probe.get("available"):
        return None
    found = gpus()
    return cuda_mismatch(seen, probe.get("version", "?"), probe.get("cuda"), found[0].driver if found else None)


def training_refusal() -> Phi3SpaceError | None:
    """Why this machine must not train at all, or None: ZeroGPU, or a GPU torch cannot use."""
    if zero_gpu():
        return ConfigError(["training is not available on ZeroGPU hardware: a GPU is lent only for short calls "
                            "(chat works; a fine-tuning run does not fit)"],
                           "Duplicate this Space on dedicated GPU hardware (e.g. l4x1), or train with "
                           "`python -m phi3space train` on your own machine; then chat with the adapter here.")
    return gpu_problem()


def startup_report() -> list[str]:
    """What the page's banner and the server log say at start: each a message and a hint."""
    problem = training_refusal()
    if problem is None:
        return []
    print(f"phi3space: {problem.message}\nphi3space: hint: {problem.hint}", file=sys.stderr, flush=True)
    return [f"{problem.message}. {problem.hint}"]


def memory_for_training_gb(held_by_chat_gb: float = 0.0) -> float | None:
    """Memory the next job can use on the first GPU: what is free now, plus what this server's chat models hold
    (they give the GPU back when a job starts). None without a GPU."""
    found = gpus()
    return found[0].free_gb + held_by_chat_gb if found else None


# ------------------------------------------------------------------ time estimates

# Training throughput of Phi-3-mini (3.8 B) with LoRA, bf16, 2048-token rows, tokens/s. H200: measured
# (bench/results/h200-2026-11-28-len2048.json); the others scaled from it by their dense bf16/fp16 throughput.
# Rough on purpose: the sign-in expiry check wants an order of magnitude, not a promise.
TOKENS_PER_S = {"H200": 9800, "H100": 8000, "B200": 15000, "RTX PRO 6000": 4500, "A100": 3100, "L40S": 3600,
                "A10G": 1250, "L4": 1200, "T4": 650}
CPU_TOKENS_PER_S = 20
MINI_PARAMS = 3.82e9


def tokens_per_s(gpu_name: str | None, params: float, method: str) -> float:
    base = CPU_TOKENS_PER_S
    if gpu_name:
        base = next((v for k, v in TOKENS_PER_S.items() if k.lower() in gpu_name.lower()), TOKENS_PER_S["L4"])
    scale = MINI_PARAMS / max(params, 1e6)
    return base * scale * (0.83 if method == "qlora" else 1.0)


def training_seconds(cfg, gpu_name: str | None = None, rows: int | None = None) -> float | None:
    """About how long ``cfg`` trains here (every row max_length long: an upper bound); None when the number of
    steps is unknown (epochs over a dataset not counted yet)."""
    from .modeling import model_size

    t = cfg.training
    steps = t.max_steps
    if not steps and rows:
        steps = max(1, math.ceil(math.ceil(math.ceil(rows / t.batch_size) / t.grad_accum) * t.epochs))
    if not steps:
        return None
    tokens = steps * t.batch_size * t.grad_accum * t.max_length
    return tokens / tokens_per_s(gpu_name, model_size(cfg.model.base)[0], cfg.model.method)


def first_gpu_name() -> str | None:
    found = gpus()
    return found[0].name if found else None


# ------------------------------------------------------------------ cost: pause an idle Space

PAUSE_ENV = "PHI3SPACE_PAUSE_IDLE_MINUTES"


class IdlePause:
    """Pause this Space (huggingface_hub ``pause_space``, with the owner's HF_TOKEN) once nothing has been queued,
    trained or chatted for ``minutes``; never while a job runs. A paused Space stops billing and stays paused until
    its owner restarts it: visitors then see it paused, not asleep."""

    def __init__(self, minutes: float | None, space: str | None, token: str | None):
        self.minutes, self.space, self.token = minutes, space, token
        self.last_busy = time.time()
        self.paused = False
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, space: str | None) -> IdlePause | None:
        raw = os.environ.get(PAUSE_ENV)
        if not raw or not space:
            return None
        try:
            minutes = float(raw)
        except ValueError:
            print(f"phi3space: {PAUSE_ENV}={raw!r} is not a number of minutes: no idle pause", file=sys.stderr)
            return None
        from .hub import keep_owner_token_out

        token = keep_owner_token_out(space=True)
        if minutes <= 0 or not token:
            print(f"phi3space: {PAUSE_ENV} needs a positive number and the owner's HF_TOKEN secret: no idle pause",
                  file=sys.stderr)
            return None
        return cls(minutes, space, token)

    def touch(self) -> None:
        """Someone used the Space (a chat reply): the idle clock starts again."""
        with self._lock:
            self.last_busy = time.time()

    def tick(self, busy: bool) -> bool:
        """Called by the job supervisor; True when it paused the Space just now."""
        with self._lock:
            now = time.time()
            if busy:
                self.last_busy = now
                return False
            if self.paused or now - self.last_busy < self.minutes * 60:
                return False
            self.last_busy = now  # a failed attempt is retried after another idle period
        return self._pause()

    def _pause(self) -> bool:
        from huggingface_hub import HfApi

        from .hub import call

        try:
            call(lambda: HfApi(token=self.token).pause_space(self.space), "pause the Space", attempts=2)
        except Phi3SpaceError as exc:
            print(f"phi3space: could not pause {self.space}: {exc.message}", file=sys.stderr)
            return False
        self.paused = True
        print(f"phi3space: no job or chat for {self.minutes:g} min: paused {self.space} (its owner restarts it)",
              file=sys.stderr)
        return True


# ------------------------------------------------------------------ storage

def fuse_mount(path: Path, mounts: str | None = None) -> str | None:
    """The FUSE filesystem type holding ``path`` (e.g. a Storage Bucket mounted on a Space), else None."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return None
    target, best = str(Path(path).resolve()), ("", "")
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
            best = (point, parts[2])
    return best[1] if best[1].startswith("fuse") else None
