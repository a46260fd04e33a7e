"""events.jsonl: the one contract between a training process and everything that shows it.

One JSON object per line, append-only, each with ``type`` (run_started, progress, eval, checkpoint, push,
run_finished, error, log) and ``time`` (unix seconds). Writers flush every line; readers tail from a byte offset
and never see half a line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .errors import scrub

EVENTS_FILE = "events.jsonl"
TYPES = ("run_started", "progress", "eval", "checkpoint", "push", "run_finished", "error", "log")


class EventWriter:
    """Appends events to ``RUN_DIR/events.jsonl`` (only on the main process under multi-GPU)."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, echo=None):
        self.path = Path(run_dir) / EVENTS_FILE
        self.enabled = enabled
        self.echo = echo  # optional callable(event) used by the CLI to print progress lines
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, type: str, **fields: Any) -> dict:
        if type not in TYPES:
            raise ValueError(f"unknown event type {type!r}")
        event = {"type": type, "time": round(time.time(), 3), **fields}
        # Secrets never reach the file, whatever a message or a config carried.
        line = scrub(json.dumps(event, default=str, ensure_ascii=False))
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        if self.echo is not None and self.enabled:  # one progress line per run, not one per process
            self.echo(json.loads(line))
        return event


def read_events(run_dir: str | Path, offset: int = 0) -> tuple[list[dict], int]:
    """Events written after byte ``offset``, and the offset to pass next time (a partial last line waits)."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.exists():
        return [], offset
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n") + 1
    events = []
    for raw in data[:end].splitlines():
        try:
            events.append(json.loads(raw))
        except json.JSONDecodeError:
            continue
    return events, offset + end


def summarize(events: list[dict]) -> dict:
    """Fold a run's events into its current state: status, step, loss, metrics, adapter, error, repo."""
    state: dict[str, Any] = {"status": "queued", "step": 0, "max_steps": None, "loss": None, "eval_loss": None,
                             "eta_s": None, "adapter": None, "error": None, "repo_url": None, "epoch": None}
    for e in events:
        kind = e.get("type")
        if kind == "run_started":  # also a resumed run: what an earlier attempt ended with no longer holds
            state.update(status="running", max_steps=e.get("max_steps"), error=None, adapter=None)
        elif kind == "progress":
            for k in ("step", "max_steps", "loss", "eta_s", "epoch"):
                if e.get(k) is not None:
                    state[k] = e[k]
        elif kind == "eval":
            state["eval_loss"] = e.get("eval_loss")
        elif kind == "push":
            state["repo_url"] = e.get("url")
        elif kind == "error":
            state["error"] = {k: e.get(k) for k in ("kind", "message", "hint")}
        elif kind == "run_finished":
            state["status"] = e.get("status", "completed")
            state["adapter"] = e.get("adapter")
            state["step"] = e.get("step", state["step"])
            state["metrics"] = e.get("metrics", {})
    return state
