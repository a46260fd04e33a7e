"""One owner for a run: phi3space.run alone knows the run folder's layout and reads events.jsonl; the README's
config reference is what `python -m phi3space config` prints; RunState folds events the way every view needs."""

import ast
import subprocess
import sys
from pathlib import Path

from phi3space.jobs import spec
from phi3space.run import RunDir, RunState, checkpoint_step

PACKAGE = Path(__file__).resolve().parent.parent / "phi3space"
README = PACKAGE.parent / "README.md"

# Every name inside a run folder. Only run.py may spell them.
LAYOUT_NAMES = [RunDir.CONFIG, RunDir.EVENTS, RunDir.LOG, RunDir.ADAPTER_WEIGHTS, RunDir.ADAPTER_CONFIG, RunDir.CARD,
                RunDir.PLOT, RunDir.TOKENIZER_CONFIG, "checkpoint-"]


def _strings(tree: ast.AST):
    """String constants, docstrings excluded (prose may name files)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node


def test_only_the_run_module_knows_the_folder_layout_and_reads_events():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("run.py", "state.py") and path.parent == PACKAGE:
            continue  # the run folder's layout, and the one fold of its events
        tree = ast.parse(path.read_text())
        for node in _strings(tree):
            for name in LAYOUT_NAMES:
                if name in node.value:
                    offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} spells {name!r}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("fold", "from_events"):
                if path.name != "follow.py":  # the page's follower folds what it tails, through RunState
                    offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} folds events itself")
    assert offenders == []


def test_the_layout_test_catches_a_module_that_builds_a_run_path(tmp_path):
    bad = ast.parse('p = run_dir / "events.jsonl"\n')
    assert [n.value for n in _strings(bad)] == ["events.jsonl"]


def test_readme_config_reference_is_generated_from_the_dataclass_help():
    printed = subprocess.run([sys.executable, "-m", "phi3space", "config"], capture_output=True, text=True,
                             check=True).stdout
    assert printed == spec.reference()
    assert "| `training.learning_rate` | `0.0002` |" in printed
    readme = README.read_text()
    start = readme.index("<!-- config-reference")
    section = readme[readme.index("\n", start) + 1:readme.index("<!-- end config-reference -->")]
    assert section == printed, "README's reference is stale: paste the output of `python -m phi3space config`"
    keys = {f"`{s}.{f}`" for s, cls in spec.SECTIONS.items() for f in cls.__dataclass_fields__}
    assert all(k in section for k in keys)


def test_run_state_keeps_the_adapter_repo_apart_from_checkpoint_pushes():
    events = [
        {"type": "run_started", "max_steps": 8, "hardware": "cpu, float32, sdpa", "time": 1},
        {"type": "progress", "step": 4, "max_steps": 8, "loss": 2.0},
        {"type": "push", "what": "checkpoint-4", "repo_id": "a/x", "url": "https://hub/a/x/tree/checkpoints"},
        {"type": "eval", "step": 4, "eval_loss": 2.5},
        {"type": "error", "kind": "oom", "message": "the GPU ran out of memory", "hint": "lower"},
        {"type": "run_finished", "status": "failed", "step": 5, "adapter": None, "time": 9},
    ]
    state = RunState.from_events(events)
    assert (state.status, state.step, state.adapter_repo, state.adapter_url) == ("failed", 5, None, None)
    assert state.checkpoint_url.endswith("/tree/checkpoints") and state.error["kind"] == "oom"
    resumed = RunState.from_events(events + [
        {"type": "run_started", "max_steps": 8, "time": 10},
        {"type": "progress", "step": 8, "max_steps": 8, "loss": 1.0},
        {"type": "push", "what": "adapter", "repo_id": "a/x", "url": "https://hub/a/x", "commit": "c"},
        {"type": "run_finished", "status": "completed", "step": 8, "adapter": "/runs/x",
         "metrics": {"steps": 8, "tokens": 1234, "train_runtime_s": 3.5}, "time": 20},
    ])
    assert (resumed.status, resumed.error, resumed.adapter_repo, resumed.adapter) == ("completed", None, "a/x", "/runs/x")
    assert resumed.results() == {"steps": 8, "tokens": 1234, "train_runtime_s": 3.5, "final_train_loss": 1.0,
                                 "eval_loss": 2.5, "best_eval_loss": 2.5}


def test_run_state_is_read_incrementally_and_ignores_a_half_written_line(tmp_path):
    run = RunDir(tmp_path)
    run.append("run_started", max_steps=3)
    run.append("progress", step=1, max_steps=3, loss=3.0)
    assert run.state().step == 1
    with run.events.open("a") as fh:
        fh.write('{"type": "progress", "step": 2')  # a writer mid-line
    assert run.state().step == 1
    with run.events.open("a") as fh:
        fh.write(', "loss": 2.0}\n')
    state = run.state()
    assert state.step == 2 and state.train_losses == [(1, 3.0), (2, 2.0)]
    state.train_losses.clear()  # callers get a copy
    assert run.state().train_losses == [(1, 3.0), (2, 2.0)]
    assert checkpoint_step("checkpoint-12/adapter_model.safetensors") == 12 and checkpoint_step("checkpoints") is None
