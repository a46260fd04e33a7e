"""Chat serving: the project's ChatEngine against a plain transformers + peft generate loop (bench/plain_chat.py),
under 1, 4 and 16 visitors at once, and the cold start of `python -m phi3space chat` against the plain script.
Prints JSON.

Each side runs in its own process, the sides interleaved (A B B A ...). Per level of concurrency: time to first
token (p50, p95), whole-reply latency (p50, p95), decode tokens/s per reply and aggregate tokens/s (all replies'
tokens over the time from the first request to the last token). Both sides run greedy decoding on the same random
model and adapter, so they write the same tokens; replies are counted by re-tokenising their text.

    python bench/chat_serving.py                                   # tiny Phi-3, 64 tokens a reply, levels 1 4 16
    python bench/chat_serving.py --model larger --tokens 128 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

MARK = "BENCH_RESULT "


def make_adapter(base: Path, dest: Path) -> Path:
    """A LoRA adapter with random (non-zero) weights on all linear layers, saved like a run folder's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base)
    get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)).save_pretrained(dest)
    return dest


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"Question {i}: tell me about " + " ".join(rng.choice(common.WORDS) for _ in range(rng.randint(3, 60)))
            for i in range(n)]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


def serve(side: str, base: str, adapter: str, levels: list[int], tokens: int) -> dict:
    """Under each level of concurrency, that many visitors ask at once; what each saw, summed up."""
    if side == "project":
        from phi3space.chat.engine import ChatEngine

        engine = ChatEngine(base)
        engine.attach(adapter)
        stream = lambda msgs: engine.stream(msgs, adapter, max_new_tokens=tokens)  # noqa: E731
        tok = engine.tokenizer
    else:
        from plain_chat import PlainChat

        plain = PlainChat(base, adapter)
        stream = lambda msgs: plain.stream(msgs, max_new_tokens=tokens)  # noqa: E731
        tok = plain.tokenizer
    list(stream([{"role": "user", "content": "warm up"}]))
    out = {}
    for level in levels:
        seen: list[dict] = []
        start = threading.Barrier(level + 1)

        def visitor(text: str, start: threading.Barrier, seen: list) -> None:
            start.wait()
            t0 = time.perf_counter()
            first, reply = None, ""
            for reply in stream([{"role": "user", "content": text}]):
                if first is None and reply:
                    first = time.perf_counter()
            end = time.perf_counter()
            n = len(tok(reply, add_special_tokens=False)["input_ids"])
            seen.append({"t0": t0, "first": first or end, "end": end, "tokens": n})

        threads = [threading.Thread(target=visitor, args=(p, start, seen)) for p in prompts(level, seed=level)]
        for t in threads:
            t.start()
        start.wait()
        for t in threads:
            t.join()
        began, ended = min(s["t0"] for s in seen), max(s["end"] for s in seen)
        out[str(level)] = {
            "aggregate_tokens_per_s": round(sum(s["tokens"] for s in seen) / (ended - began), 1),
            "ttft_p50_s": pct([s["first"] - s["t0"] for s in seen], 0.5),
            "ttft_p95_s": pct([s["first"] - s["t0"] for s in seen], 0.95),
            "latency_p50_s": pct([s["end"] - s["t0"] for s in seen], 0.5),
            "latency_p95_s": pct([s["end"] - s["t0"] for s in seen], 0.95),
            "decode_tokens_per_s_median": round(statistics.median(
                s["tokens"] / max(s["end"] - s["first"], 1e-6) for s in seen), 1),
            "tokens_median": statistics.median(s["tokens"] for s in seen),
        }
    out["peak_rss_mb"] = common.peak_rss_mb()
    return out


def cold_start(side: str, base: Path, adapter: Path) -> dict:
    """Seconds from starting the process to the first byte of the reply on its stdout, and to its end."""
    import subprocess

    if side == "project":
        argv = [common.python(), "-m", "phi3space", "chat", "--adapter", str(adapter), "--prompt", "Hello there",
                "--max-new-tokens", "16"]
    else:
        argv = [common.python(), str(Path(__file__).parent / "plain_chat.py"), str(base), str(adapter), "Hello there",
                "--max-new-tokens", "16"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=common.ROOT)
    proc.stdout.read(1)
    first = time.perf_counter() - t0
    proc.stdout.read()
    proc.wait()
    return {"first_token_s": round(first, 2), "exit_s": round(time.perf_counter() - t0, 2), "rc": proc.returncode}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "larger"], default="tiny")
    p.add_argument("--levels", default="1,4,16", help="visitors at once, comma-separated")
    p.add_argument("--tokens", type=int, default=64, help="new tokens a reply")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--child", choices=["project", "plain"], help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--adapter", help=argparse.SUPPRESS)
    a = p.parse_args()
    levels = [int(x) for x in a.levels.split(",")]
    if a.child:
        print(MARK + json.dumps(serve(a.child, a.base, a.adapter, levels, a.tokens)))
        return
    work = Path(tempfile.mkdtemp(prefix="phi3-bench-chat-"))
    t_start = time.time()
    try:
        base = common.build_phi3(work / f"phi3-{a.model}", a.model)
        adapter = make_adapter(base, work / "adapter")
        sides = ["project", "plain"]
        runs: dict[str, list] = {s: [] for s in sides}
        starts: dict[str, list] = {s: [] for s in sides}
        for n in range(a.rounds):
            for side in (sides if n % 2 == 0 else sides[::-1]):
                got = common.run_measured([common.python(), __file__, "--child", side, "--base", str(base), "--adapter",
                                           str(adapter), "--levels", a.levels, "--tokens", str(a.tokens)])
                line = next((x for x in reversed(got["stdout"].splitlines()) if x.startswith(MARK)), None)
                runs[side].append(json.loads(line[len(MARK):]) if line else {"error": got["stderr"][-3000:]})
                starts[side].append(cold_start(side, base, adapter))
                print(f"round {n} {side}: {json.dumps(runs[side][-1])[:600]} {starts[side][-1]}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report: dict = {"benchmark": "chat_serving", "machine": common.machine(),
                    "settings": {"model": a.model, "levels": levels, "tokens": a.tokens, "rounds": a.rounds}}
    for side in runs:
        ok = [r for r in runs[side] if "error" not in r]
        side_report: dict = {"errors": [r for r in runs[side] if "error" in r]}
        for level in map(str, levels):
            side_report[level] = {k: common.summary([r[level][k] for r in ok], higher_is_better="tokens_per_s" in k)
                                  for k in (ok[0][level] if ok else {})}
        side_report["cold_start_first_token_s"] = common.summary([s["first_token_s"] for s in starts[side]], False)
        side_report["peak_rss_mb"] = common.summary([r["peak_rss_mb"] for r in ok], False)
        report[side] = side_report
    top = str(max(levels))
    try:
        proj, plain = report["project"], report["plain"]
        report["ratio"] = {
            f"aggregate_tokens_per_s_at_{top}_vs_plain_best": round(
                proj[top]["aggregate_tokens_per_s"]["best"] / plain[top]["aggregate_tokens_per_s"]["best"], 2),
            f"aggregate_tokens_per_s_at_{top}_vs_plain_median": round(
                proj[top]["aggregate_tokens_per_s"]["median"] / plain[top]["aggregate_tokens_per_s"]["median"], 2),
            f"aggregate_tokens_per_s_at_{top}_vs_one_at_a_time_median": round(
                proj[top]["aggregate_tokens_per_s"]["median"] / plain["1"]["aggregate_tokens_per_s"]["median"], 2)
            if "1" in plain else None,
            "cold_start_first_token_best": round(proj["cold_start_first_token_s"]["best"]
                                                 / plain["cold_start_first_token_s"]["best"], 3),
            "cold_start_first_token_median": round(proj["cold_start_first_token_s"]["median"]
                                                   / plain["cold_start_first_token_s"]["median"], 3),
        }
    except (KeyError, ZeroDivisionError, TypeError):
        pass
    report["bench_wall_s"] = round(time.time() - t_start, 1)
    common.emit(report, a.out)


if __name__ == "__main__":
    main()
