"""Following one job's events.jsonl from a byte offset: log lines, progress and the loss curve. No gradio here."""

from __future__ import annotations

from dataclasses import dataclass, field

from html import escape

from ..cli import fmt_duration, format_event
from ..events import read_events, summarize
from ..jobs import Job, log_tail


def _line(event: dict) -> str | None:
    try:
        return format_event(event)
    except (KeyError, TypeError, ValueError):  # an event from another version of the trainer: show it raw
        return f"{event.get('type')}: " + ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("type", "time"))


@dataclass
class Follower:
    """One visitor's view of one job; each poll reads only what was appended since the last one."""

    job_id: str | None = None
    run_dir: str | None = None
    offset: int = 0
    events: list[dict] = field(default_factory=list)

    def follow(self, job: Job | None) -> bool:
        """Switch to ``job`` (None: nothing); returns True when that changed what is followed."""
        job_id = job.id if job else None
        if job_id == self.job_id:
            return False
        self.job_id, self.run_dir, self.offset, self.events = job_id, job.run_dir if job else None, 0, []
        return True

    def poll(self) -> bool:
        """Read new events; True when there were any."""
        if not self.run_dir:
            return False
        new, self.offset = read_events(self.run_dir, self.offset)
        self.events += new
        return bool(new)

    def summary(self) -> dict:
        return summarize(self.events)

    def loss_frame(self):
        """Train and eval loss by step, for a gr.LinePlot (x=step, y=loss, color=split)."""
        import pandas as pd

        rows = [(e["step"], e["loss"], "train") for e in self.events if e["type"] == "progress" and e.get("loss") is not None]
        rows += [(e["step"], e["eval_loss"], "eval") for e in self.events if e["type"] == "eval" and e.get("eval_loss") is not None]
        frame = pd.DataFrame(rows, columns=["step", "loss", "split"])
        # typed even when empty: the chart keeps the axis types of its first value
        return frame.astype({"step": "int64", "loss": "float64", "split": "str"})

    def log_text(self, job: Job | None = None, lines: int = 200) -> str:
        """Readable lines, one per event; after a crash, the tail of the process output too."""
        out = [line for line in map(_line, self.events) if line]
        for e in self.events:
            if e["type"] == "error":
                out.append(f"error: {e.get('message')}" + (f"\nhint: {e['hint']}" if e.get("hint") else ""))
        if job is not None and job.status == "failed":
            if job.error and not any(e["type"] == "error" for e in self.events):
                out.append(f"error: {job.error.get('message')}\nhint: {job.error.get('hint')}")
            tail = log_tail(job, 30)
            if tail:
                out += ["", "--- last lines of the training process output ---", tail]
        return "\n".join(out[-lines:])


def progress_html(job: Job | None, summary: dict, queue_position: int | None) -> str:
    """A progress bar with step, loss and ETA (or the place in the queue, or the final status)."""
    if job is None:
        return "<p>No job yet: fill in the form and press <b>Start</b>.</p>"
    if job.status == "queued":
        ahead = (queue_position or 1) - 1
        return (f"<p>⏳ <b>{escape(job.name)}</b> is waiting: number {queue_position} in the queue "
                f"({ahead} job{'s' if ahead != 1 else ''} ahead of it, plus the one training now).</p>")
    step, total = summary.get("step") or 0, summary.get("max_steps")
    bar = f'<progress value="{step}" max="{total}" style="width:100%"></progress>' if total else "<progress style='width:100%'></progress>"
    parts = [f"step {step}/{total or '?'}"]
    if summary.get("loss") is not None:
        parts.append(f"loss {summary['loss']:.4f}")
    if summary.get("eval_loss") is not None:
        parts.append(f"eval loss {summary['eval_loss']:.4f}")
    if job.status == "running":
        parts.append("loading data and model…" if not total else f"ETA {fmt_duration(summary.get('eta_s'))}")
    icon = {"running": "🏃", "completed": "✅", "failed": "❌", "cancelled": "⏹️"}.get(job.status, "")
    head = f"<p>{icon} <b>{escape(job.name)}</b> ({job.id}): <b class='job-status'>{job.status}</b> · {' · '.join(parts)}</p>"
    if job.status == "failed" and job.error:
        head += f"<p>{escape(str(job.error.get('message')))}<br><i>{escape(job.error.get('hint') or '')}</i></p>"
    if job.repo_url:
        url = escape(job.repo_url, quote=True)
        head += f"<p>Adapter on the Hub: <a href='{url}' target='_blank'>{url}</a></p>"
    return head + bar
