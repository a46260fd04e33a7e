"""Data at scale: `inspect` and the training data preparation on 10k, 100k (and 1M) local chat rows, against
`datasets.load_dataset` on the same file. Time and peak memory, each step in its own process, interleaved. Prints JSON.

- ``load_dataset``: ``datasets.load_dataset("json", ...)`` into an empty cache (the yardstick of the issue);
- ``inspect``: ``python -m phi3space inspect FILE`` as a person runs it (reads a bounded sample of the split), then
  once more in the same process (``warm_op_s``: the web app's Inspect, its libraries already imported);
- ``prepare``: what ``train`` does with the data before loading the model: every row read, normalised, split and
  tokenised once (``data.prepare_for_training``); memory is also given above the process's size before the data.
- with ``--baseline-root``, ``inspect`` and ``prepare`` of another checkout too (before this work: its inspect read
  the whole split; its prepare normalised every row in Python lists and measured 2,000 of them, and trl tokenised
  them again later, which is not counted here).

    python bench/data_prep.py                               # 10k and 100k generated rows
    python bench/data_prep.py --sizes 10000,100000,1000000  # and a million
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

MARK = "BENCH_RESULT "


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _anon_mb(pid: int | str = "self") -> float:
    """Anonymous resident memory of a process (not the pages of files it maps, such as Arrow files)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid, *_descendants(kid)]
    return found


class AnonPeak:
    """The peak of anonymous memory of this process and its children together, sampled every 50 ms: the memory a
    step really takes (a memory-mapped Arrow file's pages count in RSS, but are page cache the kernel can drop)."""

    def __init__(self):
        import threading

        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            total = _anon_mb() + sum(_anon_mb(p) for p in _descendants(os.getpid()))
            self.peak = max(self.peak, total)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return round(self.peak, 1)


def child(a) -> dict:
    if a.root:
        sys.path.insert(0, a.root)
    import warnings

    warnings.filterwarnings("ignore")
    import datasets

    datasets.disable_progress_bars()
    out: dict = {}
    if a.child == "load_dataset":
        before = rss_mb()
        t0 = time.perf_counter()
        ds = datasets.load_dataset("json", data_files=a.file, split="train", cache_dir=a.cache)
        out.update(rows=len(ds), op_s=round(time.perf_counter() - t0, 2), rss_before_mb=before)
    elif a.child == "inspect":
        import contextlib
        import io

        from phi3space import cli

        before = rss_mb()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            code = cli.main(["inspect", a.file, "--set", f"model.base={a.base}"])
        out.update(rc=code, op_s=round(time.perf_counter() - t0, 2), rss_before_mb=before,
                   report=[line for line in printed.getvalue().splitlines()[:6]])
        t0 = time.perf_counter()  # again, in the same process: Inspect in the (running) web app
        with contextlib.redirect_stdout(io.StringIO()):
            cli.main(["inspect", a.file, "--set", f"model.base={a.base}"])
        out["warm_op_s"] = round(time.perf_counter() - t0, 2)
    else:
        from phi3space.config import DataConfig
        from phi3space.engine import data
        from phi3space.engine.modeling import load_tokenizer

        load_tokenizer(a.base)  # what is in memory before the data: libraries and the tokenizer
        before, anon_before = rss_mb(), _anon_mb()
        cfg = DataConfig(dataset=a.file)
        peak = AnonPeak()
        t0 = time.perf_counter()
        if hasattr(data, "prepare_for_training"):
            found = data.prepare_for_training(cfg, a.base, 1024)
        else:  # a checkout from before: its preflight
            found = data.prepare_with_tokenizer(cfg, a.base, 1024)
        out.update(rows=found.report.train_rows, op_s=round(time.perf_counter() - t0, 2), rss_before_mb=before,
                   anon_peak_mb=peak.stop(), anon_before_mb=round(anon_before, 1))
    out["peak_rss_mb"] = common.peak_rss_mb()
    out["above_before_mb"] = round(out["peak_rss_mb"] - out["rss_before_mb"], 1)
    out["worker_peak_rss_mb"] = common.peak_rss_mb(children=True)  # the largest tokenising process, if any
    return out


def write_rows(path: Path, rows: int) -> Path:
    """``rows`` generated chats (cycling through 10,000 distinct ones), written as they are made."""
    chats = common.generated_chats(min(rows, 10_000))
    with path.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            fh.write(json.dumps(chats[i % len(chats)]) + "\n")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", default="load_dataset,inspect,prepare")
    p.add_argument("--baseline-root", help="a checkout of this project to measure too (inspect, prepare)")
    p.add_argument("--baseline-max-rows", type=int, default=100_000, help="skip the baseline above this size")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--child", choices=["load_dataset", "inspect", "prepare"], help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(MARK + json.dumps(child(a)))
        return
    t_start = time.time()
    work = Path(tempfile.mkdtemp(prefix="phi3-bench-data-"))
    report: dict = {"benchmark": "data_prep", "machine": common.machine(), "settings": {"sizes": a.sizes, "rounds": a.rounds}}
    try:
        base = common.build_phi3(work / "phi3-tiny", "tiny")  # only its tokenizer is used
        for size in [int(x) for x in a.sizes.split(",")]:
            data = write_rows(work / f"chats-{size}.jsonl", size)
            entry: dict = {"file_mb": round(data.stat().st_size / 2**20, 1)}
            steps = [(s, None) for s in a.steps.split(",")]
            if a.baseline_root and size <= a.baseline_max_rows:
                steps += [(s, a.baseline_root) for s in ("inspect", "prepare") if s in a.steps]
            results: dict = {}
            for n in range(a.rounds):
                for step, root in (steps if n % 2 == 0 else steps[::-1]):
                    cache = work / f"cache-{step}-{n}"
                    argv = [common.python(), __file__, "--child", step, "--file", str(data), "--base", str(base),
                            "--cache", str(cache)] + (["--root", root] if root else [])
                    got = common.run_measured(argv, env={"HF_DATASETS_CACHE": str(cache)})
                    shutil.rmtree(cache, ignore_errors=True)
                    line = next((x for x in reversed(got["stdout"].splitlines()) if x.startswith(MARK)), None)
                    res = json.loads(line[len(MARK):]) if line else {"error": got["stderr"][-2000:]}
                    res["process_s"] = got["wall_s"]
                    key = step + (" (baseline)" if root else "")
                    results.setdefault(key, []).append(res)
                    print(f"{size} round {n} {key}: {json.dumps(res)[:400]}", file=sys.stderr)
            for key, rs in results.items():
                ok = [r for r in rs if "error" not in r]
                entry[key] = {k: common.summary([r[k] for r in ok], higher_is_better=False)
                              for k in ("op_s", "warm_op_s", "process_s", "peak_rss_mb", "above_before_mb", "worker_peak_rss_mb",
                                        "anon_peak_mb", "anon_before_mb")
                              if ok and k in ok[0]} if ok else {"errors": rs}
                if ok and "report" in ok[0]:
                    entry[key]["report"] = ok[0]["report"]
            if "inspect" in entry and "load_dataset" in entry and "op_s" in entry["inspect"]:
                entry["inspect_vs_load_dataset"] = {
                    "process_s_median": round(entry["inspect"]["process_s"]["median"]
                                              / entry["load_dataset"]["process_s"]["median"], 2),
                    "op_s_median": round(entry["inspect"]["op_s"]["median"] / entry["load_dataset"]["op_s"]["median"], 2),
                    "warm_op_s_median": round(entry["inspect"]["warm_op_s"]["median"]
                                              / entry["load_dataset"]["op_s"]["median"], 2),
                    "peak_rss_median": round(entry["inspect"]["peak_rss_mb"]["median"]
                                             / entry["load_dataset"]["peak_rss_mb"]["median"], 2)}
            report[str(size)] = entry
            data.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["bench_wall_s"] = round(time.time() - t_start, 1)
    common.emit(report, a.out)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
