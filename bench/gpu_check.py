"""GPU check and benchmark: LoRA and QLoRA on a full-size Phi-3-mini architecture (random weights), printing JSON.

No Hub access is needed: the model is built from the vendored Phi-3-mini config with random weights, which is
enough to measure speed and memory (not quality). Runs the real engine (phi3space.training.train).

    python bench/gpu_check.py               # on a CUDA machine: full size
    python bench/gpu_check.py --tiny        # anywhere: 2 layers, checks the script itself
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tinymodel builds the random Phi-3


def build_model(dest: Path, tiny: bool) -> tuple[int, float]:
    """The full Phi-3-mini shape (or, ``tiny``, the tests' shape) with random bfloat16 weights: (parameters, seconds)."""
    import torch
    from tinymodel import build_phi3

    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=128) if tiny else {}
    t0 = time.time()
    n = build_phi3(dest, device="cuda" if torch.cuda.is_available() else "cpu", bf16=True, **shape)
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return n, time.time() - t0


def write_data(path: Path, rows: int, words: int) -> None:
    rng = random.Random(0)
    vocab = "the a model learns to answer questions about data training loss token adapter rank alpha".split()
    with path.open("w") as fh:
        for _ in range(rows):
            q = " ".join(rng.choice(vocab) for _ in range(words // 4))
            a = " ".join(rng.choice(vocab) for _ in range(words))
            fh.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")


def run(method: str, base: Path, data: Path, out: Path, steps: int, batch: int, max_length: int) -> dict:
    import torch

    from phi3space import config
    from phi3space.engine import training
    from phi3space.run import RunDir

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    cfg = config.from_dict({
        "model": {"base": str(base), "method": method},
        "data": {"dataset": str(data), "eval_fraction": 0.02},
        "training": {"max_steps": steps, "batch_size": batch, "grad_accum": 1, "max_length": max_length,
                     "logging_steps": 5, "save_steps": steps, "eval_steps": steps},
        "output": {"dir": str(out)},
    })
    from phi3space.engine.estimates import estimate_memory_gb

    t0 = time.time()
    training.train(cfg)
    run_dir = RunDir(out)
    events, _ = run_dir.read_events()
    started = next(e for e in events if e["type"] == "run_started")
    progress = [e for e in events if e["type"] == "progress"]
    finished = events[-1]
    rates = [e["tokens_per_s"] for e in progress if e.get("tokens_per_s")]
    return {
        "method": method, "status": finished["status"], "steps": finished["step"], "wall_s": round(time.time() - t0, 1),
        "hardware": started["hardware"], "trainable_params": started["trainable_params"],
        "trainable_pct": started["trainable_pct"], "first_loss": progress[0]["loss"], "last_loss": progress[-1]["loss"],
        "eval_loss": finished["metrics"].get("eval_loss"), "tokens_per_s_median": sorted(rates)[len(rates) // 2] if rates else None,
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "estimated_gb": round(estimate_memory_gb(cfg), 2),  # what the web form's memory warning assumes
        "adapter_mb": round(run_dir.adapter_weights.stat().st_size / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--words", type=int, default=300, help="answer length in words (~1.2 tokens each)")
    args = parser.parse_args()
    import torch

    from phi3space.engine.modeling import detect_hardware

    report: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    hw = detect_hardware()
    report["hardware"] = hw.describe()
    report["dtype"], report["attn"] = hw.dtype, hw.attn_implementation
    work = Path(tempfile.mkdtemp(prefix="phi3-bench-"))
    try:
        base = work / "phi3-mini-random"
        n, secs = build_model(base, args.tiny)
        report["model_params"], report["build_s"] = n, round(secs, 1)
        data = work / "data.jsonl"
        write_data(data, rows=args.steps * args.batch + 50, words=args.words)
        report["settings"] = {"steps": args.steps, "batch": args.batch, "max_length": args.max_length, "words": args.words}
        for method in ("lora", "qlora"):
            try:
                report[method] = run(method, base, data, work / f"run-{method}", args.steps, args.batch, args.max_length)
            except Exception as exc:  # report and go on: one failed method must not hide the other's numbers
                report[method] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]}
            gc.collect()
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
