"""Will a model fit in this process's memory? Asked before any model is loaded on the CPU (chat, evaluate, merge,
export, training), so that a small Space (cpu-basic: 2 vCPU, 16 GB) refuses with a message and a hint instead of
being killed by the kernel's out-of-memory killer half-way through a load.

What a model needs: its parameters (counted from the safetensors headers of a local folder, else from its
config.json, without loading any weight) times the bytes of the dtype it is loaded in, plus a margin. What this
process may use: the least of the container's cgroup limit less what the container already uses (cgroup v2
``memory.max`` / ``memory.current``, v1 ``memory.limit_in_bytes`` / ``memory.usage_in_bytes``, page cache it can
reclaim counted as free) and the host's ``MemAvailable``. ``PHI3SPACE_MEMORY_LIMIT_BYTES`` replaces that number
(tests; or an owner who knows better).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from phi3space.errors import OutOfMemory

LIMIT_ENV = "PHI3SPACE_MEMORY_LIMIT_BYTES"
CGROUP = Path("/sys/fs/cgroup")
MEMINFO = Path("/proc/meminfo")
BYTES_PER_PARAM = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "nf4": 0.56}  # nf4: 4 bits + scales, as QLoRA
MARGIN = 0.15  # of the weights: buffers, the load's own copies, the tokenizer, activations of a reply
MARGIN_BYTES = 512 << 20  # and a fixed half gigabyte: the load's buffers, the first forward pass
TRAINING_MARGIN = 0.5  # training also holds the LoRA weights, their gradients and Adam's moments, and activations
GB = 1 << 30


def available_bytes(cgroup: Path = CGROUP, meminfo: Path = MEMINFO) -> tuple[int | None, str]:
    """Bytes this process may still use, and where that number comes from; (None, ...) when nothing says."""
    if (override := os.environ.get(LIMIT_ENV, "").strip()):
        try:
            return int(float(override)), LIMIT_ENV
        except ValueError:
            pass
    found: list[tuple[int, str]] = []
    if (left := _cgroup_left(cgroup)) is not None:
        found.append((left, "the container's memory limit, less what it uses"))
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((int(line.split()[1]) * 1024, "memory available on this machine"))
    except (OSError, ValueError, IndexError):
        pass
    return min(found) if found else (None, "unknown")


def _cgroup_left(root: Path) -> int | None:
    v2 = (root / "memory.max", root / "memory.current", root / "memory.stat", "inactive_file")
    v1 = (root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.usage_in_bytes",
          root / "memory" / "memory.stat", "total_inactive_file")
    for limit_file, usage_file, stat_file, reclaimable in (v2, v1):
        try:
            limit = limit_file.read_text().strip()
        except OSError:
            continue
        if limit == "max" or int(limit) >= 1 << 60:  # v1 writes "no limit" as a huge number
            return None
        try:
            used = int(usage_file.read_text().strip())
        except (OSError, ValueError):
            used = 0
        try:
            stats = dict(line.split() for line in stat_file.read_text().splitlines() if line.count(" ") == 1)
            used -= int(stats.get(reclaimable, 0))
        except (OSError, ValueError):
            pass
        return max(0, int(limit) - max(0, used))
    return None


def parameter_count(base: str, token: str | None = None) -> int:
    """Parameters of ``base``: from the headers of a local folder's safetensors files (exact), else from its
    config.json (Phi-3's layout); no weight is read."""
    folder = Path(base).expanduser()
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if files:
        from safetensors import safe_open

        total = 0
        for file in files:
            with safe_open(str(file), "pt") as f:
                for key in f.keys():
                    n = 1
                    for dim in f.get_slice(key).get_shape():
                        n *= dim
                    total += n
        return total
    return _from_config(_config(base, token))


def _config(base: str, token: str | None) -> dict:
    local = Path(base).expanduser() / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(base, token=token).to_dict()


def _from_config(c: dict) -> int:
    h, layers, inter, vocab = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
    heads = c.get("num_attention_heads") or 1
    kv = c.get("num_key_value_heads") or heads
    head_dim = h // heads
    per_layer = h * (h + 2 * kv * head_dim) + h * h + 3 * h * inter + 2 * h  # qkv, o, gate_up + down, two norms
    embeddings = vocab * h * (1 if c.get("tie_word_embeddings") else 2)
    return layers * per_layer + embeddings + h


def needed_bytes(params: int, dtype: str, training: bool = False) -> int:
    """Memory to hold ``params`` parameters in ``dtype`` (float32, bfloat16, float16, nf4), with the margin."""
    weights = params * BYTES_PER_PARAM[dtype]
    return int(weights * (1 + MARGIN + (TRAINING_MARGIN if training else 0)) + MARGIN_BYTES)


def check_memory(base: str, dtype: str, purpose: str, token: str | None = None, training: bool = False) -> int:
    """Refuse to load ``base`` in ``dtype`` on the CPU for ``purpose`` (e.g. "chat", "evaluation", "merge",
    "export", "training") when it would not fit in the memory this process may use; returns the bytes it needs.

    Raises:
        OutOfMemory: it would not fit (the message says how much it needs and how much there is; the hint where
            it would run).
    """
    params = parameter_count(base, token)
    need = needed_bytes(params, dtype, training)
    have, source = available_bytes()
    if have is None or need <= have:
        return need
    smaller = "" if dtype != "float32" or training else " (bfloat16 on the CPU would need about " \
        f"{needed_bytes(params, 'bfloat16') / GB:.1f} GB)"
    raise OutOfMemory(f"{purpose} needs about {need / GB:.1f} GB of memory to load {base} ({params / 1e9:.2f} B "
                      f"parameters in {dtype}){smaller}, but this process may use {have / GB:.1f} GB ({source})",
                      "Run it where there is room: a GPU Space (e.g. l4x1) or ZeroGPU for chat, Hugging Face Jobs "
                      "for training, evaluation, merge and export (choose it with --backend, or with the page's Hardware/Run "
                      "on choice), or a machine with more memory; on a CPU, bfloat16 halves what float32 needs.")


def cpu_dtype(base: str, purpose: str, token: str | None = None) -> str:
    """The dtype to load ``base`` in on the CPU: float32 when it fits, else bfloat16 when that does.

    Raises:
        OutOfMemory: not even bfloat16 fits.
    """
    params = parameter_count(base, token)
    have, _ = available_bytes()
    if have is not None and needed_bytes(params, "float32") > have:
        check_memory(base, "bfloat16", purpose, token)
        return "bfloat16"
    return "float32"


def peak_memory_bytes() -> int:
    """This process's peak memory so far: on a GPU, the most the CUDA allocator has held (what runs out first);
    else the process's peak resident memory. Training's progress events carry it (the page, the plan's probe)."""
    import resource

    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_reserved())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
