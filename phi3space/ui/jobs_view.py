"""The visitor's jobs: the followed job's progress, live loss chart and log; the list of their runs; Stop.

A gr.Timer polls; each tick reads only the events appended since the last one (Follower). Reloading the page, or
opening it elsewhere, follows the visitor's newest unfinished job again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import gradio as gr

from ..errors import AuthError
from ..jobs import Job
from ..run import FINAL, RunState
from .common import UI_ONLY, user_errors
from .follow import Follower, progress_html
from .services import get_runner, identify

TABLE_COLUMNS = ["job", "name", "status", "steps", "loss", "eval_loss", "adapter / repo", "submitted"]


@dataclass
class JobsView:
    follower: gr.State
    job_picker: gr.Dropdown
    chat_button: gr.Button
    outputs: list  # what a poll refreshes, in poll()'s return order


def _owner(profile, oauth_token) -> str | None:
    return identify(profile, oauth_token).owner


def _rows(jobs: list[Job], statuses: dict[str, str]) -> list[list]:
    runner = get_runner()
    rows = []
    for job in reversed(jobs):
        s = runner.state(job)
        fmt = lambda v: f"{v:.4f}" if isinstance(v, (int, float)) else ""  # noqa: E731
        rows.append([job.id, job.name, statuses[job.id], f"{s['step']}/{s['max_steps'] or '?'}", fmt(s["loss"]),  # last logged
                     fmt((s["metrics"] or {}).get("eval_loss", s["eval_loss"])), s["repo_url"] or s["adapter"] or "",
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(job.created))])
    return rows


def _choices(jobs: list[Job], statuses: dict[str, str]) -> list[tuple[str, str]]:
    return [(f"{j.name} · {j.id} · {statuses[j.id]}", j.id) for j in reversed(jobs)]


def poll(follower: Follower, seen: tuple | None, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None):
    """One timer tick: new events of the followed job, and the job list when a status changed."""
    owner = _owner(profile, oauth_token)
    runner = get_runner()
    jobs = runner.list(owner) if owner else []
    statuses = {j.id: runner.status(j)[0] for j in jobs}
    if follower.job_id is None or follower.job_id not in statuses:
        live = [j for j in jobs if statuses[j.id] not in FINAL]
        follower.follow((live or jobs or [None])[-1])
    job = next((j for j in jobs if j.id == follower.job_id), None)
    status = statuses.get(follower.job_id)
    new = follower.poll()
    signature = (owner, follower.job_id, tuple(statuses.items()))
    changed = signature != seen
    if not new and not changed and (job is None or status in FINAL):
        return (follower, seen) + (gr.skip(),) * 7
    html = progress_html(job, status, follower.state, runner.queue_position(job.id) if job else None)
    frame = follower.loss_frame()
    # An empty frame would fix the chart's colour scale with no series (and no line would show later).
    plot = (frame if len(frame) else None) if new or changed else gr.skip()
    log = follower.log_text(job, status) if new or changed else gr.skip()
    table = _rows(jobs, statuses) if changed else gr.skip()
    picker = gr.Dropdown(choices=_choices(jobs, statuses), value=follower.job_id) if changed else gr.skip()
    stop = gr.Button(interactive=job is not None and status not in FINAL)
    resume = gr.Button(visible=job is not None and status in ("failed", "cancelled")
                       and (job.run.latest_checkpoint() is not None or bool(job.remote and follower.state.checkpoint_url)))
    return follower, signature, html, plot, log, table, picker, stop, resume


@user_errors
def pick(job_id: str | None, follower: Follower, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None):
    """Follow another of the visitor's jobs (chosen in the list)."""
    owner = _owner(profile, oauth_token)
    if not job_id or not owner or job_id == follower.job_id:
        return follower, gr.skip()
    job = get_runner().get(job_id, owner)
    new = Follower()
    new.follow(job)
    return new, None  # forget the seen signature: the next tick redraws everything


@user_errors
def stop(follower: Follower, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None):
    owner = identify(profile, oauth_token).owner
    if owner is None:
        raise AuthError("sign in to stop your jobs", "Press 'Sign in with Hugging Face'.")
    if follower.job_id is None:
        return
    runner = get_runner()
    job = runner.cancel(follower.job_id, owner)
    status, _ = runner.status(job)
    gr.Info(f"Stopping {job.id}: the adapter trained so far is saved." if status == "running" else f"{job.id}: {status}.")


@user_errors
def resume(follower: Follower, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None):
    """Continue the followed (failed or stopped) job from its newest checkpoint."""
    visitor = identify(profile, oauth_token)
    if follower.job_id is None:
        return None
    job = get_runner().resume(follower.job_id, visitor.require_owner(), visitor.token)
    gr.Info(f"{job.id} is queued again: it continues from its newest checkpoint.")
    return None  # forget the seen signature: the next tick redraws everything


def build(timer: gr.Timer, follower: gr.State) -> JobsView:
    seen = gr.State(None)
    gr.Markdown("### Your runs")
    progress = gr.HTML(progress_html(None, None, RunState(), None), elem_id="job-progress")
    with gr.Row():
        stop_btn = gr.Button("Stop", variant="stop", interactive=False, elem_id="stop")
        resume_btn = gr.Button("Resume from last checkpoint", visible=False, elem_id="resume")
        chat_btn = gr.Button("Chat with this run", elem_id="open-chat")
    with gr.Row():
        plot = gr.LinePlot(x="step", y="loss", color="split", label="Loss", height=260, elem_id="loss-plot",
                           color_map={"train": "#1f77b4", "eval": "#ff7f0e"})
        log = gr.Textbox(label="Log", lines=12, max_lines=12, autoscroll=True, interactive=False, elem_id="job-log")
    picker = gr.Dropdown(label="Follow job", choices=[], interactive=True)
    table = gr.Dataframe(headers=TABLE_COLUMNS, label="All your runs", interactive=False, wrap=True)
    outputs = [follower, seen, progress, plot, log, table, picker, stop_btn, resume_btn]
    timer.tick(poll, [follower, seen], outputs, show_progress="hidden", queue=False, api_visibility=UI_ONLY)
    picker.input(pick, [picker, follower], [follower, seen], api_visibility=UI_ONLY)
    stop_btn.click(stop, follower, None, api_visibility=UI_ONLY)
    resume_btn.click(resume, follower, seen, api_visibility=UI_ONLY)
    return JobsView(follower, picker, chat_btn, outputs)
