"""Shared by the benchmarks: random Phi-3 models of a chosen shape, generated chat data, child processes measured
one at a time (wall time and peak memory from the kernel), medians and the machine's description.

Nothing here is timed in tests: the benchmarks print JSON, and their results are kept in bench/results/.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tinymodel: the random Phi-3 models are built where the tests' one is

# name -> (hidden, layers, heads, intermediate, initializer range). "tiny" is the tests' model (tests/tinymodel.py).
SHAPES = {
    "tiny": (64, 2, 4, 128, 0.2),
    "larger": (512, 4, 8, 1024, 0.02),
    "mini": (3072, 32, 32, 8192, 0.02),  # the full Phi-3-mini shape (3.8 B parameters): a GPU's job
}


def build_phi3(dest: Path, shape: str, seed: int = 0) -> Path:
    """A Phi-3 checkpoint folder with random weights of ``shape``, the real vocabulary and the real tokenizer."""
    import torch
    from tinymodel import build_phi3 as build

    if (dest / "config.json").exists():
        return dest
    hidden, layers, heads, inter, init = SHAPES[shape]
    mini = shape == "mini"
    build(dest, seed, device="cuda" if mini and torch.cuda.is_available() else "cpu", bf16=mini, hidden_size=hidden,
          num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=inter,
          initializer_range=init)
    return dest


# ---------------------------------------------------------------- data

WORDS = ("the a model learns to answer questions about data training loss token adapter rank alpha river stone "
         "garden light music paper window orange quiet bright seven north winter letter").split()
SUBJECTS = ["Zorbia", "the Blue Quasar", "a snarkle", "a drobble", "Lake Venn", "the Ortol tree", "Mount Kess",
            "the Harrow bridge", "a pellifer", "the Quill Archive"]


def generated_chats(rows: int, seed: int = 0) -> list[dict]:
    """Chats shaped like real ones (1-3 turns, 5-120 words a turn, a system prompt now and then), with facts that
    repeat, so that a model can learn something and held-out loss means something."""
    rng = random.Random(seed)
    facts = {s: " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for s in SUBJECTS}
    out = []
    for _ in range(rows):
        msgs = [{"role": "system", "content": "Answer briefly and truthfully."}] if rng.random() < 0.2 else []
        for _ in range(rng.choice((1, 1, 2, 3))):
            subject = rng.choice(SUBJECTS)
            ask = f"Tell me about {subject}" + (" " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 30))))
            answer = f"{subject.capitalize()}: {facts[subject]}. " + " ".join(
                rng.choice(WORDS) for _ in range(int(rng.paretovariate(1.5) * 10) % 120))
            msgs += [{"role": "user", "content": ask.strip() + "?"}, {"role": "assistant", "content": answer.strip()}]
        out.append({"messages": msgs})
    return out


def chats_from(path: Path) -> list[dict]:
    """Chats from a real file (messages JSONL, or a ShareGPT JSON array), as ``{"messages": [...]}`` rows."""
    from phi3space.config import DataConfig
    from phi3space.engine import data

    cfg = DataConfig(dataset=str(path), eval_fraction=0)
    rows, broken = data.load_rows(cfg, "train")
    kept, _ = data.normalise(list(rows), cfg, str(path), broken)
    return [dict(r) for r in kept if "messages" in r]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def split_chats(rows: list[dict], heldout: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n = max(1, round(len(rows) * heldout))
    return rows[n:], rows[:n]


# ---------------------------------------------------------------- measuring

def run_measured(argv: list[str], env: dict | None = None, timeout: float = 3600) -> dict:
    """Run a child process to its end: its exit code, wall time and peak resident memory (the kernel's count for
    that child and what it waited for), with stdout and stderr kept for the report."""
    t0 = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    # Each child reports its own peak memory and CPU time (RUSAGE_CHILDREN would mix the children together).
    return {"rc": proc.returncode, "wall_s": round(time.time() - t0, 2), "stdout": out, "stderr": err, "t0": t0}


def peak_rss_mb(children: bool = False) -> float:
    """This process's peak resident memory so far (Linux reports KiB); ``children``: that of its largest child
    process that has ended (0 if none)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def cpu_seconds() -> float:
    """CPU time this process has used (user + system): steadier than wall time on a shared machine."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return round(ru.ru_utime + ru.ru_stime, 1)


def summary(values: list[float], higher_is_better: bool = True) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {}
    best = max(values) if higher_is_better else min(values)
    return {"best": round(best, 3), "median": round(statistics.median(values), 3), "runs": [round(v, 3) for v in values]}


def machine() -> dict:
    import torch

    from phi3space.engine.training import library_versions

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    info = {"date": date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "versions": library_versions(), "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def emit(report: dict, out: str | None) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


def python() -> str:
    return sys.executable
