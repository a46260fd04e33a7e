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
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache

from phi3space.errors import ConfigError, ModelError, Phi3SpaceError, scrub

ALLOW_CPU_ENV = "PHI3SPACE_ALLOW_CPU"  # "1": train on the CPU even though nvidia-smi sees a GPU


# The torch versions ZeroGPU supports (huggingface/hub-docs docs/hub/spaces-zerogpu.md, read 2026-12). Its GPUs are
# RTX Pro 6000 Blackwell cards (sm_120), which need a build for CUDA 12.8 or newer: pre-requirements.txt pins one.
ZEROGPU_TORCH_VERSIONS = ("2.8.0", "2.9.1", "2.10.0", "2.11.0")


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
    """One GPU as nvidia-smi reports it (memory in GB)."""

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
                           "Send the run to Hugging Face Jobs (choose it as compute.backend; billed to you), duplicate "
                           "this Space on dedicated GPU hardware (e.g. l4x1), or train with `python -m phi3space "
                           "train` on your own machine; then chat with the adapter here.")
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


def first_gpu_name() -> str | None:
    """The first GPU's name (for time estimates), or None without a GPU."""
    found = gpus()
    return found[0].name if found else None


# ------------------------------------------------------------------ cost: pause an idle Space


# ------------------------------------------------------------------ storage

