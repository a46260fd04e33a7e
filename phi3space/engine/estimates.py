"""Rough sizes, memory and training times of a run, for the form's plan and the sign-in lifetime check."""

from __future__ import annotations

import math
from pathlib import Path

from phi3space.engine.objectives import objective_of

KNOWN_SIZES = {  # params, hidden, layers, intermediate, vocab
    "mini": (3.82e9, 3072, 32, 8192, 32064),
    "small": (7.4e9, 4096, 32, 14336, 100352),
    "medium": (14e9, 5120, 40, 17920, 32064),
}


def model_size(base: str) -> tuple[float, int, int, int, int]:
    """Parameters and shape of a base model: from a local config.json, else by name (Phi-3 mini when unknown)."""
    cfg_file = Path(base).expanduser() / "config.json"
    if cfg_file.is_file():
        import json

        c = json.loads(cfg_file.read_text())
        h, layers, inter, vocab = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
        return float(2 * vocab * h + layers * (4 * h * h + 3 * h * inter)), h, layers, inter, vocab
    name = base.lower()
    return next((v for k, v in KNOWN_SIZES.items() if k in name), KNOWN_SIZES["mini"])


# A GGUF export's peak memory (engine/export.py streams: the libraries, then the base as stored in bf16 and one layer
# in float32 at a time). The budget bench/export_memory.py checks, and what a machine for an export needs.
EXPORT_FIXED_BYTES = 0.5e9
EXPORT_BYTES_PER_BF16_BYTE = 1.2


def export_memory_bytes(base: str) -> float:
    """Memory a GGUF export of an adapter on ``base`` needs at most (bench/export_memory.py measures it)."""
    return EXPORT_FIXED_BYTES + EXPORT_BYTES_PER_BF16_BYTE * 2 * model_size(base)[0]


def sequences_per_row(cfg) -> int:
    """Sequences a row puts through the model: the objective's (a DPO pair is two, its prompt with each answer)."""
    return objective_of(cfg).sequences_per_row


def estimate_memory_gb(cfg) -> float:
    """A rough, worst-case peak GPU memory for training a RunConfig (every row max_length long): weights, LoRA +
    Adam, activations, fp32 logits, CUDA context. bench/gpu_check.py prints it beside the measured peak."""
    params, h, layers, inter, vocab = model_size(cfg.model.base)
    t = cfg.training
    weights = params * (0.56 if cfg.model.method == "qlora" else 2.0)
    lora = cfg.lora.r * layers * (7 * h + 3 * inter) * 16
    tokens = t.batch_size * t.max_length * sequences_per_row(cfg)
    acts = tokens * h * layers * 2 + tokens * 34 * h * 2 if t.gradient_checkpointing else tokens * 34 * h * layers * 2
    logits = tokens * vocab * 8
    return (weights + lora + acts + logits) / 2**30 + 1.0



# Training throughput of Phi-3-mini (3.8 B) with LoRA in bf16 on one H200, tokens/s, by mean row length (measured,
# bench/results: ~4,300 on ~500-token rows, ~9,800 on 2,048-token rows); other GPUs scaled from it by their dense
# bf16 tensor throughput (GPU_SPEED). Rough on purpose: the Jobs price tag, the plan's table and the sign-in expiry
# check want an order of magnitude, not a promise.
H200_TOKENS_PER_S = ((500, 4300.0), (2048, 9800.0))
GPU_SPEED = {"B200": 1.53, "H200": 1.0, "H100": 1.0, "A100": 0.32, "L40S": 0.37, "RTX PRO 6000": 0.5, "A10G": 0.13,
             "L4": 0.12, "T4": 0.066}
QLORA_SPEED = 0.82  # QLoRA / LoRA on the same GPU (bench: ~3,500 vs ~4,300 tokens/s)
CPU_TOKENS_PER_S = 20


MINI_PARAMS = 3.82e9


def gpu_speed(gpu: str | None) -> float:
    """A GPU's throughput relative to one H200 (GPU_SPEED; an A10G's when the name is not in the table)."""
    return next((v for k, v in GPU_SPEED.items() if k.lower() in gpu.lower()), GPU_SPEED["A10G"]) if gpu else GPU_SPEED["A10G"]


def tokens_per_s(gpu_name: str | None, params: float, method: str, mean_length: float = 2048) -> float:
    """Training tokens per second of a LoRA (or QLoRA) run on one ``gpu_name`` (None: the CPU) for rows of
    ``mean_length`` tokens: the H200 figures at that length scaled by the GPU's speed, and from Phi-3-mini's size
    to ``params``."""
    base = CPU_TOKENS_PER_S
    if gpu_name:
        (x0, y0), (x1, y1) = H200_TOKENS_PER_S
        base = min(max(y0 + (mean_length - x0) * (y1 - y0) / (x1 - x0), y0), y1) * gpu_speed(gpu_name)
    return base * MINI_PARAMS / max(params, 1e6) * (QLORA_SPEED if method == "qlora" else 1.0)


def training_seconds(cfg, gpu_name: str | None = None, rows: int | None = None) -> float | None:
    """About how long ``cfg`` trains here (every row max_length long: an upper bound); None when the number of
    steps is unknown (epochs over a dataset not counted yet)."""
    t = cfg.training
    steps = t.max_steps
    if not steps and rows:
        steps = max(1, math.ceil(math.ceil(math.ceil(rows / t.batch_size) / t.grad_accum) * t.epochs))
    if not steps:
        return None
    work = steps * t.batch_size * t.grad_accum * t.max_length * sequences_per_row(cfg) * objective_of(cfg).work_per_token
    return work / tokens_per_s(gpu_name, model_size(cfg.model.base)[0], cfg.model.method)

