"""Peak memory of a GGUF export (`python -m phi3space export ADAPTER --quant Q --out DIR`) against its budget:
0.5 GB + 1.2 x the base's bf16 size (issue 26). Random bf16 Phi-3 bases of two sizes, each with a random LoRA
adapter on every linear layer; each export in its own process, which reports its own peak resident memory. A
straight line through the two sizes gives the figure for Phi-3-mini (3.82 B parameters) quoted in the README.

    python bench/export_memory.py                 # f16 and q8_0 on a 60 M and a 220 M parameter base
    python bench/export_memory.py --quants f16
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, machine, python, run_measured  # noqa: E402

# name -> (hidden, layers, heads, intermediate): the real vocabulary (32,064) and tokenizer, random bf16 weights
SIZES = {"60M": (512, 6, 8, 1408), "220M": (1024, 12, 16, 2816)}
PHI3_MINI_PARAMS = 3_821_079_552


def budget(params: int) -> float:
    from phi3space.engine.estimates import EXPORT_BYTES_PER_BF16_BYTE, EXPORT_FIXED_BYTES

    return EXPORT_FIXED_BYTES + EXPORT_BYTES_PER_BF16_BYTE * 2 * params


def build(folder: Path, size: str) -> tuple[Path, int]:
    """A bf16 base of ``size`` and a LoRA adapter on it (random, non-zero updates): (adapter folder, parameters)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tinymodel import build_phi3
    from transformers import AutoModelForCausalLM

    hidden, layers, heads, inter = SIZES[size]
    base = folder / f"base-{size}"
    params = build_phi3(base, bf16=True, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        num_key_value_heads=heads, intermediate_size=inter)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
    adapter = folder / f"adapter-{size}"
    model.save_pretrained(adapter)
    return adapter, params


def child(argv: list[str]) -> None:
    """Run the export in this process, then print its peak resident memory (bytes) as the last line."""
    from phi3space import cli

    t0 = time.time()
    rc = cli.main(argv)
    print(json.dumps({"rc": rc, "peak_rss_bytes": _high_water_mark(), "seconds": round(time.time() - t0, 2)}))


def _high_water_mark() -> int:
    """This process's peak resident memory: the kernel's VmHWM (getrusage's ru_maxrss would also count the parent's
    size when it forked this process: Linux keeps it across exec)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quants", default="f16,q8_0")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--out", help="also write the report to this JSON file")
    args = parser.parse_args()
    if args.child is not None:
        return child(args.child)
    rows = []
    with tempfile.TemporaryDirectory(prefix="phi3space-bench-export-") as tmp:
        for size in SIZES:
            adapter, params = build(Path(tmp), size)
            for quant in args.quants.split(","):
                done = run_measured([python(), __file__, "--child", "export", str(adapter), "--quant", quant,
                                     "--out", str(Path(tmp) / f"out-{size}")])
                measured = json.loads(done["stdout"].strip().splitlines()[-1]) if done["rc"] == 0 else {}
                peak = measured.get("peak_rss_bytes")
                rows.append({"size": size, "params": params, "bf16_bytes": 2 * params, "quant": quant,
                             "rc": done["rc"], "seconds": measured.get("seconds"), "peak_rss_bytes": peak,
                             "budget_bytes": int(budget(params)), "within_budget": peak is not None and peak <= budget(params),
                             "bytes_per_param": round(peak / params, 2) if peak else None,
                             **({"stderr": done["stderr"][-2000:]} if done["rc"] else {})})
    report = {"benchmark": "export_memory", "machine": machine(), "rows": rows,
              "phi3_mini": {quant: _extrapolate([r for r in rows if r["quant"] == quant and r["peak_rss_bytes"]])
                            for quant in args.quants.split(",")}}
    emit(report, args.out)


def _extrapolate(rows: list[dict]) -> dict:
    """Peak memory for Phi-3-mini from a straight line through the measured sizes (fixed cost + bytes per parameter)."""
    if len(rows) < 2:
        return {}
    (p1, m1), (p2, m2) = sorted((r["params"], r["peak_rss_bytes"]) for r in rows)[:2]
    per_param = (m2 - m1) / (p2 - p1)
    fixed = m1 - per_param * p1
    peak = fixed + per_param * PHI3_MINI_PARAMS
    return {"fixed_bytes": int(fixed), "bytes_per_param": round(per_param, 3), "peak_gb": round(peak / 1e9, 2),
            "budget_gb": round(budget(PHI3_MINI_PARAMS) / 1e9, 2), "within_budget": peak <= budget(PHI3_MINI_PARAMS)}


if __name__ == "__main__":
    main()
