"""Training speed against the Phi-3 cookbook's recipe (bench/cookbook_recipe.py), side by side, printing JSON.

Both sides train the same random-weight Phi-3 on the same chats for one epoch at the same max_length, each in its own
process, interleaved (A B B A ...) so that a busy machine slows both alike. Reported per side, best and median:
real tokens per second (tokens of the training rows, no padding, counted once for both), wall time of the whole
process, time to the first optimizer step, peak resident memory (and peak GPU memory on a GPU), optimizer steps, the
final train loss and the loss on held-out chats (assistant tokens only, the same measurement for both adapters).

    python bench/train_vs_recipe.py                                  # tiny Phi-3, 300 generated chats, 2 rounds
    python bench/train_vs_recipe.py --model larger --rounds 3        # hidden 512, 4 layers
    python bench/train_vs_recipe.py --data dummy_conversation.json --max-length 1024  # FastChat's 500 ShareGPT chats
    python bench/train_vs_recipe.py --model mini                     # the full Phi-3-mini shape, on a GPU
    python bench/train_vs_recipe.py --set training.batch_size=8      # the project side with other settings
    python bench/train_vs_recipe.py --baseline-root /tmp/old-checkout  # a third side: the project as it was
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

MARK = "BENCH_RESULT "
PEAK_BF16_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "L4": 121, "A10G": 125, "A10": 125, "T4": 65}


# ---------------------------------------------------------------- one side, in its own process

def heldout_loss(base: str, adapter: str, rows: list[dict], max_length: int) -> float:
    """Mean loss on the assistant tokens of held-out chats (the mask trl trains on), base + adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from phi3space.engine import tokens
    from phi3space.engine.modeling import load_tokenizer

    tok = load_tokenizer(base)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    model = PeftModel.from_pretrained(model.to(device), adapter).eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for row in rows:
            ids, mask = tokens.tokenize_example(row, tok)
            ids, mask = ids[:max_length], mask[:max_length]
            labels = torch.tensor([i if m else -100 for i, m in zip(ids, mask)], device=device)[None]
            if (labels[0, 1:] != -100).sum() == 0:
                continue
            logits = model(input_ids=torch.tensor([ids], device=device)).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum")
            total, count = total + loss.item(), count + int((labels[0, 1:] != -100).sum())
    return round(total / count, 4)


def run_project(a) -> dict:
    import yaml

    from phi3space import cli
    from phi3space.run import RunDir

    training = {"max_length": a.max_length, "epochs": 1}
    if a.max_steps:
        training["max_steps"] = a.max_steps
    cfg = {"model": {"base": a.base}, "data": {"dataset": a.train, "eval_fraction": 0}, "training": training,
           "output": {"dir": a.run_dir}}
    path = Path(a.run_dir + ".yaml")
    path.write_text(yaml.safe_dump(cfg))
    sets = [x for s in a.set for x in ("--set", s)]
    code = cli.main(["train", str(path), *sets])
    if code != 0:
        raise SystemExit(f"project run failed with exit code {code}")
    events, _ = RunDir(a.run_dir).read_events()
    started = next(e for e in events if e["type"] == "run_started")
    progress = [e for e in events if e["type"] == "progress"]
    finished = events[-1]["metrics"]
    out = {"steps": finished["steps"], "train_runtime_s": finished["train_runtime_s"], "train_loss": finished["train_loss"],
           "final_train_loss": progress[-1]["loss"], "train_begin": started["time"], "first_step": progress[0]["time"],
           "hardware": started["hardware"]}
    import torch

    if torch.cuda.is_available():
        from phi3space import config
        from phi3space.engine.estimates import estimate_memory_gb

        out["estimated_gb"] = round(estimate_memory_gb(config.load(path, a.set)), 2)  # the web form's warning
    return out


def child(a) -> None:
    if a.child == "baseline":  # the project from another checkout (imported before anything else imports it)
        sys.path.insert(0, a.baseline_root)
    import torch

    if a.child in ("project", "baseline"):
        out = run_project(a)
    else:
        import cookbook_recipe

        out = cookbook_recipe.train(a.base, a.train, a.run_dir, a.max_length, a.max_steps or -1)
    out["peak_rss_mb"] = common.peak_rss_mb()
    out["cpu_s"] = common.cpu_seconds()
    if torch.cuda.is_available():
        out["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    rows = [json.loads(line) for line in Path(a.heldout).read_text().splitlines()]
    out["heldout_loss"] = heldout_loss(a.base, a.run_dir, rows, a.max_length)
    print(MARK + json.dumps(out))


# ---------------------------------------------------------------- the comparison

def real_tokens(base: str, rows: list[dict], max_length: int) -> int:
    from phi3space.engine import tokens
    from phi3space.engine.modeling import load_tokenizer

    tok = load_tokenizer(base)
    return sum(min(len(tokens.tokenize_example(r, tok)[0]), max_length) for r in rows)


def one_run(side: str, a, base: Path, train: Path, heldout: Path, work: Path, n: int) -> dict:
    out = work / f"{side}-{n}"
    argv = [common.python(), __file__, "--child", side, "--base", str(base), "--train", str(train), "--heldout",
            str(heldout), "--max-length", str(a.max_length), "--run-dir", str(out)]
    if a.max_steps:
        argv += ["--max-steps", str(a.max_steps)]
    if side in ("project", "baseline"):
        argv += [x for s in a.set for x in ("--set", s)]
    if side == "baseline":
        argv += ["--baseline-root", a.baseline_root]
    got = common.run_measured(argv)
    shutil.rmtree(out, ignore_errors=True)
    line = next((x for x in reversed(got["stdout"].splitlines()) if x.startswith(MARK)), None)
    if got["rc"] != 0 or line is None:
        return {"error": f"exit {got['rc']}", "stderr": got["stderr"][-3000:]}
    res = json.loads(line[len(MARK):])
    res["wall_s"] = got["wall_s"]
    res["to_train_begin_s"] = round(res.pop("train_begin") - got["t0"], 2)
    res["to_first_step_s"] = round(res.pop("first_step") - got["t0"], 2)
    return res


def compare(a) -> dict:
    work = Path(tempfile.mkdtemp(prefix="phi3-bench-train-"))
    try:
        base = common.build_phi3(work / f"phi3-{a.model}", a.model)
        if a.data:
            chats = common.chats_from(Path(a.data))
            source = a.data
        else:
            chats = common.generated_chats(a.rows)
            source = f"generated ({a.rows} chats)"
        train_rows, heldout_rows = common.split_chats(chats, 0.1)
        train = common.write_jsonl(work / "train.jsonl", train_rows)
        heldout = common.write_jsonl(work / "heldout.jsonl", heldout_rows)
        tokens = real_tokens(str(base), train_rows, a.max_length)
        sides = ["project", "recipe"] + (["baseline"] if a.baseline_root else [])
        runs: dict[str, list] = {side: [] for side in sides}
        for n in range(a.rounds):
            for side in (sides if n % 2 == 0 else sides[::-1]):
                res = one_run(side, a, base, train, heldout, work, n)
                if "train_runtime_s" in res:
                    res["train_tokens_per_s"] = round(tokens / res["train_runtime_s"], 1)
                    res["end_to_end_tokens_per_s"] = round(tokens / res["wall_s"], 1)
                runs[side].append(res)
                print(f"round {n} {side}: " + json.dumps({k: v for k, v in res.items() if k != "stderr"}), file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"benchmark": "train_vs_recipe", "machine": common.machine(),
              "settings": {"model": a.model, "shape": common.SHAPES[a.model], "data": source, "train_rows": len(train_rows),
                           "heldout_rows": len(heldout_rows), "max_length": a.max_length, "epochs": 1,
                           "max_steps": a.max_steps, "rounds": a.rounds, "project_overrides": a.set,
                           "baseline_root": a.baseline_root,
                           "real_tokens": tokens}}
    for side, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        report[side] = {
            "train_tokens_per_s": common.summary([r["train_tokens_per_s"] for r in ok]),
            "end_to_end_tokens_per_s": common.summary([r["end_to_end_tokens_per_s"] for r in ok]),
            "wall_s": common.summary([r["wall_s"] for r in ok], higher_is_better=False),
            "to_first_step_s": common.summary([r["to_first_step_s"] for r in ok], higher_is_better=False),
            "to_train_begin_s": common.summary([r["to_train_begin_s"] for r in ok], higher_is_better=False),
            "peak_rss_mb": common.summary([r["peak_rss_mb"] for r in ok], higher_is_better=False),
            "cpu_s": common.summary([r["cpu_s"] for r in ok], higher_is_better=False),
            "steps": ok[0]["steps"] if ok else None,
            "final_train_loss": common.summary([r["final_train_loss"] for r in ok], higher_is_better=False),
            "heldout_loss": common.summary([r["heldout_loss"] for r in ok], higher_is_better=False),
            "errors": [r for r in rs if "error" in r],
        }
        if ok and "peak_gpu_mem_gb" in ok[0]:
            report[side]["peak_gpu_mem_gb"] = common.summary([r["peak_gpu_mem_gb"] for r in ok], higher_is_better=False)
    p, r = report["project"], report["recipe"]
    if p["train_tokens_per_s"] and r["train_tokens_per_s"]:
        pairs = [x["train_tokens_per_s"] / y["train_tokens_per_s"] for x, y in zip(runs["project"], runs["recipe"])
                 if "error" not in x and "error" not in y]
        report["ratio"] = {
            "train_tokens_per_s_best": round(p["train_tokens_per_s"]["best"] / r["train_tokens_per_s"]["best"], 3),
            "train_tokens_per_s_median": round(p["train_tokens_per_s"]["median"] / r["train_tokens_per_s"]["median"], 3),
            "train_tokens_per_s_per_round": [round(x, 3) for x in pairs],
            "end_to_end_best": round(p["end_to_end_tokens_per_s"]["best"] / r["end_to_end_tokens_per_s"]["best"], 3),
            "peak_rss_best": round(p["peak_rss_mb"]["best"] / r["peak_rss_mb"]["best"], 3),
            "first_step_gap_s_best": round(p["to_first_step_s"]["best"] - r["to_first_step_s"]["best"], 2),
        }
        if "peak_gpu_mem_gb" in p:
            p["estimated_gb"] = next((x.get("estimated_gb") for x in runs["project"] if "estimated_gb" in x), None)
            report["ratio"]["peak_gpu_mem_best"] = round(p["peak_gpu_mem_gb"]["best"] / r["peak_gpu_mem_gb"]["best"], 3)
    b = report.get("baseline")
    if b and b["train_tokens_per_s"] and p["train_tokens_per_s"]:
        report["ratio_to_baseline"] = {
            "train_tokens_per_s_best": round(p["train_tokens_per_s"]["best"] / b["train_tokens_per_s"]["best"], 3),
            "train_tokens_per_s_median": round(p["train_tokens_per_s"]["median"] / b["train_tokens_per_s"]["median"], 3),
            "heldout_loss_median": [p["heldout_loss"]["median"], b["heldout_loss"]["median"]],
        }
    report.update(gpu_figures(a, base_params(a.model), p))
    return report


def base_params(model: str) -> int:
    hidden, layers, _, inter, _ = common.SHAPES[model]
    vocab = 32064
    return 2 * vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * inter)


def gpu_figures(a, params: int, project: dict) -> dict:
    """MFU (6 x parameters FLOPs per token, LoRA with checkpointing costs about that) and the web form's estimate."""
    import torch

    if not torch.cuda.is_available() or not project.get("train_tokens_per_s"):
        return {}
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    out = {"gpu": name}
    if peak:
        out["mfu_best"] = round(project["train_tokens_per_s"]["best"] * 6 * params / (peak * 1e12), 4)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(common.SHAPES), default="tiny")
    p.add_argument("--data", help="a chat file (messages JSONL or ShareGPT JSON); default: generated chats")
    p.add_argument("--rows", type=int, default=300, help="generated chats (without --data)")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--max-steps", type=int, default=0, help="the same number of optimizer steps on both sides (default: one epoch)")
    p.add_argument("--rounds", type=int, default=2, help="runs per side, interleaved")
    p.add_argument("--set", action="append", default=[], help="project setting for its side, e.g. training.batch_size=8")
    p.add_argument("--baseline-root", help="a checkout of this project to measure as a third side (e.g. before a change)")
    p.add_argument("--out", help="also write the JSON here")
    # one side, in its own process
    p.add_argument("--child", choices=["project", "recipe", "baseline"], help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--train", help=argparse.SUPPRESS)
    p.add_argument("--heldout", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a)
        return
    t0 = time.time()
    report = compare(a)
    report["bench_wall_s"] = round(time.time() - t0, 1)
    common.emit(report, a.out)


if __name__ == "__main__":
    main()
