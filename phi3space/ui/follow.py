"""Following one job's events from a byte offset: log lines, progress and the loss curve. No gradio here."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

from phi3space.hub.gguf_card import run_commands
from phi3space.jobs.store import Job
from phi3space.report import PLAN_COLUMNS, fmt_duration, fmt_gb, format_event, plan_option_cells, plan_problem
from phi3space.run import RunDir, RunState


def _line(event: dict) -> str | None:
    try:
        return format_event(event)
    except (KeyError, TypeError, ValueError):  # an event from another version of the trainer: show it raw
        return f"{event.get('type')}: " + ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("type", "time"))


def drawable(points: list, last_step: int) -> list:
    """A series as a line chart can draw it: a single point becomes a short level stroke ending at it (a line chart
    draws nothing for one point, e.g. a run's only evaluation)."""
    if len(points) != 1:
        return list(points)
    step, value = points[0][0], points[0][1]
    return [(step - max(1, last_step // 50), value), (step, value)]


@dataclass
class Follower:
    """One visitor's view of one job; each poll reads only what was appended since the last one."""

    job_id: str | None = None
    run_dir: str | None = None
    offset: int = 0
    events: list[dict] = field(default_factory=list)
    state: RunState = field(default_factory=RunState)
    remembered: str | None = None  # the job id this browser last saw followed (its stored page state)

    def follow(self, job: Job | None) -> bool:
        """Switch to ``job`` (None: nothing); returns True when that changed what is followed."""
        job_id = job.id if job else None
        if job_id == self.job_id:
            return False
        self.job_id, self.run_dir, self.offset, self.events = job_id, job.run_dir if job else None, 0, []
        self.state = RunState()
        return True

    def poll(self) -> bool:
        """Read new events and fold them into the state; True when there were any."""
        if not self.run_dir:
            return False
        new, self.offset = RunDir(self.run_dir).read_events(self.offset)
        for e in new:
            self.state.fold(e)
        self.events += new
        return bool(new)

    def loss_frame(self):
        """Train and eval loss by step, for a gr.LinePlot (x=step, y=loss, color=split)."""
        import pandas as pd

        last = max((step for step, _ in self.state.train_losses + self.state.eval_losses), default=0)
        rows = [(step, loss, "train") for step, loss in drawable(self.state.train_losses, last)]
        rows += [(step, loss, "eval") for step, loss in drawable(self.state.eval_losses, last)]
        if self.state.train_losses and not self.state.eval_losses and self.expects_eval:
            # The chart fixes its series (and colours) when it is first drawn: the eval series must be there from the
            # start, as an empty point the chart leaves out, or the eval line never shows until a reload.
            rows.append((self.state.train_losses[0][0], float("nan"), "eval"))
        frame = pd.DataFrame(rows, columns=["step", "loss", "split"])
        # typed even when empty: the chart keeps the axis types of its first value
        return frame.astype({"step": "int64", "loss": "float64", "split": "str"})

    def reward_frame(self, metric: str):
        """A DPO run's reward ``metric`` (accuracy or margin) by step, train and eval, for a gr.LinePlot (x=step,
        y=metric, color=split); empty for other runs."""
        import pandas as pd

        at = {"accuracy": 1, "margin": 2}[metric]
        rows = [(r[0], r[at], split) for split, rewards in (("train", self.state.train_rewards),
                                                            ("eval", self.state.eval_rewards))
                for r in rewards if r[at] is not None]
        if self.state.train_rewards and not self.state.eval_rewards and self.expects_eval:  # (see loss_frame)
            rows.append((self.state.train_rewards[0][0], float("nan"), "eval"))
        frame = pd.DataFrame(rows, columns=["step", metric, "split"])
        return frame.astype({"step": "int64", metric: "float64", "split": "str"})

    @property
    def expects_eval(self) -> bool:
        """The run evaluates (its run_started event counts eval rows)."""
        started = [e for e in self.events if e.get("type") == "run_started"]
        return bool(started and ((started[-1].get("dataset") or {}).get("eval_rows")))

    @property
    def stage(self) -> str | None:
        """What a merge job is doing now (its newest progress event's stage)."""
        return next((e.get("stage") for e in reversed(self.events) if e.get("type") == "progress"), None)

    def log_text(self, job: Job | None = None, status: str | None = None, lines: int = 200) -> str:
        """Readable lines, one per event; after a crash, the tail of the process output too."""
        out = []
        for e in self.events:
            line = _line(e) if e["type"] != "error" else f"error: {e.get('message')}" + (f"\nhint: {e['hint']}" if e.get("hint") else "")
            if line:
                out.append(line)
        if job is not None and status == "failed":
            tail = job.run.log_tail(30)
            if tail:
                out += ["", "--- last lines of the training process output ---", tail]
        return "\n".join(out[-lines:])


PUSH_AGAIN = "The adapter is kept: press 'Push again' to push it with your current sign-in (you may sign in again first)."


def general_html(state: RunState) -> str:
    """The general-skills check before the push: both scores, whether the push is held ('Push anyway'), and the
    questions base and adapter answered differently."""
    g = state.general
    n = g["questions"]
    mark = lambda side: "✅" if side["right"] else "❌"  # noqa: E731
    rows = "".join(f"<tr><td>{escape(e['question'])}</td><td>{escape(e['answer'])}</td>"
                   f"<td>{mark(e['base'])} {escape(e['base']['reply'][:80])}</td>"
                   f"<td>{mark(e['adapter'])} {escape(e['adapter']['reply'][:80])}</td></tr>"
                   for e in g["examples"] if e["base"]["right"] != e["adapter"]["right"])
    out = (f"<p class='general-check'>General skills before the push: the adapter got <b>{round(g['adapter'] * n)}/{n}"
           f"</b> general questions right, its base <b>{round(g['base'] * n)}/{n}</b>.</p>")
    if state.push_held:
        out += (f"<p class='push-held'>⚠️ {escape(state.push_held)}.<br><i>Look at the questions below; press "
                "'Push anyway' to push it all the same.</i></p>")
    if rows:
        out += ("<table class='general-diff'><tr><th>question</th><th>answer</th><th>base</th><th>adapter</th></tr>"
                + rows + "</table>")
    return out


def plan_html(plan: dict) -> str:
    """A plan job's result: what the probe measured here, whether the run fits (or the settings that make it fit),
    and a table of where it could run, with time, price and the estimate's error."""
    fix = plan.get("settings_that_fit")
    head = (f"<p class='plan-summary'>Measured here ({escape(str(plan['hardware']))}), {plan['probe_steps']} steps of "
            f"your longest rows: peak memory <b>{fmt_gb(plan['peak_memory_bytes'])}</b> of "
            f"{fmt_gb(plan['memory_available_bytes'])}, <b>{plan['tokens_per_s'] or '?'}</b> tokens/s.<br>")
    if plan["fits"]:
        head += f"✅ It fits here: the whole run ({plan['tokens']:,} tokens) takes about <b>{fmt_duration(plan['eta_s'])}</b>."
    else:
        problem = plan_problem(plan)
        head += "⚠️ It does not fit here as set" + (f" ({escape(problem)})" if problem else "") + ". "
        head += (f"It fits with: <code>{escape(', '.join(f'{k} = {v}' for k, v in fix.items()))}</code>." if fix else
                 "Nothing tried fits here: pick a larger GPU below.")
    header = "".join(f"<th>{c}</th>" for c in PLAN_COLUMNS)
    rows = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in plan_option_cells(o)) + "</tr>"
                   for o in plan["options"])
    return head + f"</p><div class='plan-table'><table class='plan-options'><tr>{header}</tr>{rows}</table></div>"


def progress_html(job: Job | None, status: str | None, state: RunState, queue_position: int | None,
                  stage: str | None = None) -> str:
    """A progress bar with step, loss and ETA (or the place in the queue, or the final status); ``stage`` is what a
    job that is not training (a merge) is doing."""
    if job is None:
        return "<p>No job yet: fill in the form and press <b>Start</b>.</p>"
    if status == "queued":
        ahead = (queue_position or 1) - 1
        return (f"<p>⏳ <b>{escape(job.name)}</b> is waiting: number {queue_position} in the queue "
                f"({ahead} job{'s' if ahead != 1 else ''} ahead of it, plus the one training now).</p>")
    step, total = state.step or 0, state.max_steps
    bar = f'<progress value="{step}" max="{total}" style="width:100%"></progress>' if total else "<progress style='width:100%'></progress>"
    if stage is None:
        parts = [f"step {step}/{total or '?'}"]
    else:  # (a plan does not know its stages ahead: it says what it is doing)
        parts = [f"stage {step}/{total}: {escape(stage)}" if total else escape(stage)]
    if state.loss is not None:
        parts.append(f"loss {state.loss:.4f}")
    if state.eval_loss is not None:
        parts.append(f"eval loss {state.eval_loss:.4f}")
    if state.train_rewards:  # a DPO run
        parts.append(f"reward accuracy {state.train_rewards[-1][1]:.2f}")
    if status == "running" and stage is None:
        parts.append("loading data and model…" if not total else f"ETA {fmt_duration(state.eta_s)}")
    elif status == "running" and state.eta_s is not None:  # an eval or export job: what is left of its stages
        parts.append(f"ETA {fmt_duration(state.eta_s)}")
    icon = {"running": "🏃", "completed": "✅", "failed": "❌", "cancelled": "⏹️"}.get(status, "")
    head = f"<p>{icon} <b>{escape(job.name)}</b> ({job.id}): <b class='job-status'>{status}</b> · {' · '.join(parts)}</p>"
    if status == "failed" and state.error:
        hint = PUSH_AGAIN if state.push_pending else state.error.get("hint") or ""  # the page has a button for it
        head += f"<p>{escape(str(state.error.get('message')))}<br><i>{escape(hint)}</i></p>"
    if state.general:
        head += general_html(state)
    if state.plan:
        head += plan_html(state.plan)
    model = "GGUF and Modelfile" if job.kind == "export" else "Merged model"  # (what an export pushes)
    for what, url in (("Adapter", state.adapter_url), (model, state.model_url)):
        if url:
            url = escape(url, quote=True)
            head += f"<p>{what} on the Hub: <a href='{url}' target='_blank'>{url}</a></p>"
    if job.kind == "export" and status == "completed" and state.exported:
        lines = "\n".join(run_commands(state.exported[0], state.model_url))
        head += f"<p>Run it on your machine:</p><pre class='run-it'>{escape(lines)}</pre>"
    return head + bar
