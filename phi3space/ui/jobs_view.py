"""The visitor's jobs: the followed job's progress, live loss chart and log; the list of their runs; Stop, Resume,
Chat, and Merge (written here for download, pushed when asked). Chat and Merge act on the training run, also while
one of its eval, export or merge jobs is followed, and a note says on which run or why they are disabled.

A gr.Timer polls; each tick reads only the events appended since the last one (Follower). The followed job's id is
kept in the browser (gr.BrowserState), so a reload, or the page opened again later, follows the same job; without
one it follows the visitor's running job (else the next queued one, else the newest).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from phi3space.errors import AuthError, ConfigError, SignInNeeded
from phi3space.hub.access import check_push_access
from phi3space.jobs.followups import Merge
from phi3space.jobs.kinds import kind_of
from phi3space.jobs.store import Job
from phi3space.refs import check_repo_id
from phi3space.run import FINAL, RunState
from phi3space.ui.common import UI_ONLY, hub_destination, user_errors
from phi3space.ui.follow import Follower, progress_html
from phi3space.ui.services import acted_on, actions_note, get_runner, identify, run_status, signed_in

TABLE_COLUMNS = ["name", "status", "steps", "loss", "eval loss", "adapter / model", "submitted", "job"]
# Room for each column at any width (a phone sees the name, status, steps and loss first, and scrolls the table
# sideways inside its box for the rest, never the page).
TABLE_WIDTHS = ["92px", "96px", "72px", "64px", "96px", "260px", "140px", "110px"]  # (a phone: four columns in view)


POLL_S = 1.0  # how often the page asks about the visitor's jobs while one is queued or running
IDLE_POLL_S = 5.0  # ... and while none is: a job started elsewhere shows within this; the page's own actions wake it


@dataclass
class JobsView:
    """What other parts of the page wire to in the jobs view: the followed job, its picker, the chat button, and what
    a poll refreshes."""

    follower: gr.State
    job_memory: gr.BrowserState
    job_picker: gr.Dropdown
    chat_button: gr.Button
    outputs: list  # what a poll refreshes, in poll()'s return order


def _owner(profile, oauth_token) -> str | None:
    return signed_in(profile, oauth_token).owner  # on a Space, also brings back the visitor's runs after a restart


def _where(runner, job: Job, status: str, s: RunState) -> str:
    """Where a job's result is: the Hub page once pushed, else its run folder (relative to the data folder)."""
    if s.model_url or s.adapter_url:
        return s.model_url or s.adapter_url
    if s.has_adapter:
        path = Path(s.adapter)
        return str(path.relative_to(runner.root)) if path.is_relative_to(runner.root) else str(path)
    return ""


def _rows(jobs: list[Job], statuses: dict[str, str]) -> list[list]:
    runner = get_runner()
    fmt = lambda v: f"{v:.4f}" if isinstance(v, (int, float)) else ""  # noqa: E731
    rows = []
    for job in reversed(jobs):
        status, s = run_status(job)
        eval_loss = (s.metrics or {}).get("eval_loss", s.eval_loss)
        rows.append([job.name, statuses[job.id], f"{s.step}/{s.max_steps or '?'}", fmt(s.loss), fmt(eval_loss),
                     _where(runner, job, status, s), time.strftime("%Y-%m-%d %H:%M", time.localtime(job.created)), job.id])
    return rows


def _choices(jobs: list[Job], statuses: dict[str, str]) -> list[tuple[str, str]]:
    return [(f"{j.name} · {j.id} · {statuses[j.id]}", j.id) for j in reversed(jobs)]


def default_job(jobs: list[Job], statuses: dict[str, str], remembered: str | None = None) -> Job | None:
    """The job a page follows when it has not chosen one: the one this browser followed last, else the running one,
    else the next to start, else the newest."""
    by_id = {j.id: j for j in jobs}
    if remembered in by_id:
        return by_id[remembered]
    running = [j for j in jobs if statuses[j.id] == "running"]
    queued = [j for j in jobs if statuses[j.id] == "queued"]
    return (running[-1:] or queued[:1] or jobs[-1:] or [None])[0]


def poll(follower: Follower, seen: tuple | None, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None):
    """One timer tick: new events of the followed job, and the job list when a status or the followed job's
    progress changed.

    The follower is changed in place and never sent back: a tick that began before a click chose another job
    (Evaluate, Export, Merge, the job list) would otherwise put the old follower back when it ends, and the page would
    go on following the old job."""
    owner = _owner(profile, oauth_token)
    runner = get_runner()
    jobs = runner.list(owner) if owner else []
    statuses = {j.id: run_status(j)[0] for j in jobs}
    if follower.job_id is None or follower.job_id not in statuses:
        follower.follow(default_job(jobs, statuses, follower.remembered))
    job = next((j for j in jobs if j.id == follower.job_id), None)
    status = statuses.get(follower.job_id)
    new = follower.poll()
    signature = (owner, follower.job_id, tuple(statuses.items()))
    changed = signature != seen
    memory = follower.job_id if follower.job_id != follower.remembered else gr.skip()
    follower.remembered = follower.job_id
    if not new and not changed and (job is None or status in FINAL):
        return (gr.skip(), seen, memory) + (gr.skip(),) * 14
    stage = None
    if job is not None and not kind_of(job).trains:  # a merge job: what it is doing, rather than steps and losses
        stage = "done" if status == "completed" else (follower.stage or "starting")
    html = progress_html(job, status, follower.state, runner.queue_position(job.id) if job else None, stage)
    trains = job is None or kind_of(job).trains  # an eval, export or merge job has no loss: no empty chart for it
    plot = gr.LinePlot(value=_plot(follower), visible=trains) if new or changed else gr.skip()
    rewards = [_rewards_plot(follower, m) if new or changed else gr.skip() for m in REWARD_METRICS]
    log = follower.log_text(job, status) if new or changed else gr.skip()
    table = _rows(jobs, statuses) if new or changed else gr.skip()  # steps and losses move during a run
    picker = gr.Dropdown(choices=_choices(jobs, statuses), value=follower.job_id) if changed else gr.skip()
    live = job is not None and status not in FINAL
    stop = gr.Button("Cancel" if status == "queued" else "Stop", interactive=live)
    state = run_status(job)[1] if job is not None else None  # the follower's state, with the page's status
    resume = gr.Button(visible=state is not None and state.can_resume)
    run, run_state = acted_on(job, jobs)  # the actions act on the training run, whichever of its jobs is followed
    done = run_state is not None and run_state.has_adapter
    push = gr.Button("Push anyway" if state is not None and state.push_held else "Push again",
                     visible=state is not None and state.push_pending)
    # Every second while one of the visitor's jobs is queued or running, every few seconds while none is.
    pace = gr.Timer(value=POLL_S if any(s not in FINAL for s in statuses.values()) else IDLE_POLL_S) if changed \
        else gr.skip()
    return (gr.skip(), signature, memory, html, plot, log, table, picker, stop, resume, gr.Button(interactive=done),
            gr.Button(interactive=done), push, *rewards, actions_note(job, run, run_state), pace)


LOSS_COLOURS = {"train": "#1f77b4", "eval": "#ff7f0e"}
REWARD_METRICS = ("accuracy", "margin")  # a DPO run's charts beside its loss, shown for DPO runs only


def _rewards_plot(follower: Follower, metric: str):
    frame = follower.reward_frame(metric)
    return gr.LinePlot(value=frame if len(frame) else None, visible=bool(len(frame)))


def _plot(follower: Follower):
    frame = follower.loss_frame()
    return frame if len(frame) else None  # an empty frame would fix the chart's colour scale with no series


def wake(seen: tuple | None):
    """The timer back to every second once an action (Start, Plan, Evaluate, Export, Merge, Resume, a pick) made the
    page forget what it drew; the next tick then sets the pace."""
    return gr.Timer(value=POLL_S) if seen is None else gr.skip()


@user_errors
def load(follower: Follower, remembered: str | None, profile: gr.OAuthProfile | None,
         oauth_token: gr.OAuthToken | None):
    """Page load (or reload, on any device): follow the job this browser followed before, else the visitor's
    running one."""
    follower.follow(None)
    follower.remembered = remembered if isinstance(remembered, str) else None
    return poll(follower, None, profile, oauth_token)


@user_errors
def pick(job_id: str | None, follower: Follower, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None):
    """Follow another of the visitor's jobs (chosen in the list)."""
    owner = _owner(profile, oauth_token)
    if not job_id or not owner or job_id == follower.job_id:
        return follower, gr.skip()
    return following(get_runner().get(job_id, owner), follower), None  # None: the next tick redraws everything


def acted_on_id(follower: Follower, owner: str) -> Job:
    """The training run the page's actions act on (the followed run, or the run the followed job read).

    Raises:
        ConfigError: no job is followed, or its run is not the owner's any more.
    """
    if follower.job_id is None:
        raise ConfigError(["no run is selected"], "Pick a finished run in 'Follow job' first.")
    runner = get_runner()
    run, _ = acted_on(runner.get(follower.job_id, owner), runner.list(owner))
    if run is None:
        raise ConfigError(["the run this job acted on is no longer in your list"], "Pick a finished run in 'Follow job'.")
    return run


def following(job: Job, previous: Follower | None = None) -> Follower:
    """A fresh follower of ``job`` (what Start, Merge and the job list use)."""
    new = Follower()
    new.follow(job)
    new.remembered = previous.remembered if previous else None
    return new


@user_errors
def stop(follower: Follower, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None):
    """Stop the followed job (the owner's only); says so in a toast.

    Raises:
        AuthError: nobody is signed in."""
    owner = identify(profile, oauth_token).owner
    if owner is None:
        raise SignInNeeded("sign in to stop your jobs")
    if follower.job_id is None:
        return
    runner = get_runner()
    job = runner.cancel(follower.job_id, owner)
    status, _ = runner.status(job)
    what = "the adapter trained so far is saved" if kind_of(job).trains else "the merge stops"
    gr.Info(f"Stopping {job.id}: {what}." if status == "running" else f"{job.id}: {status}.")


@user_errors
def resume(follower: Follower, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None):
    """Continue the followed (failed or stopped) job from its newest checkpoint."""
    visitor = identify(profile, oauth_token)
    if follower.job_id is None:
        return None
    job = get_runner().resume(follower.job_id, visitor.require_owner(), visitor.token)
    gr.Info(f"{job.id} is queued again: it continues from its newest checkpoint.")
    return None  # forget the seen signature: the next tick redraws everything


@user_errors
def push_again_click(follower: Follower, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None):
    """Push the followed run's adapter (its push failed) with the visitor's current sign-in."""
    visitor = identify(profile, oauth_token)
    if follower.job_id is None:
        return None
    job = get_runner().push_again(follower.job_id, visitor.require_owner(), visitor.token)
    gr.Info(f"{job.id}: the adapter is on the Hub now.")
    return None  # forget the seen signature: the next tick redraws everything


@user_errors
def merge(follower: Follower, push: bool, repo: str, private: bool, profile: gr.OAuthProfile | None,
          oauth_token: gr.OAuthToken | None):
    """Queue "merge the run's adapter into its base" as a job, and follow it: the merged model is written here (and
    offered for download when done), and with ``push`` uploaded to ``repo``."""
    visitor = identify(profile, oauth_token)
    owner = visitor.require_owner()
    runner = get_runner()
    source = acted_on_id(follower, owner)
    push = bool(push) or runner.space  # (on a Space everything goes to the visitor's Hub account)
    if push:
        repo = check_repo_id(repo, "destination repo", hint="Type the repo the merged model goes to: your-name/my-model, "
                                                           "or untick 'Push to the Hub' to download it from this page.")
        token = visitor.hub_token()
        if not token and runner.space:
            raise SignInNeeded("pushing the merged model needs your Hugging Face sign-in")
        if not token:
            raise AuthError("pushing the merged model needs a Hugging Face token",
                            "Untick 'Push to the Hub' to merge here and download the files from this page; or set "
                            "HF_TOKEN (or run `hf auth login`) and restart the app.")
        check_push_access(repo, token, source.name, bool(private))  # a wrong namespace or a read-only token fails here
    job = runner.submit(Merge(source.id, repo if push else None, private=bool(private)), owner, visitor.token)
    gr.Info(f"Merge job {job.id} submitted: " + (f"the merged model goes to {repo}." if push else
                                                  "its files are offered for download here when it is done."))
    return following(job, follower), None


def build(timer: gr.Timer, follower: gr.State, seen: gr.State) -> JobsView:
    """Lay out the visitor's runs (progress, the table, stop/resume/push/merge) and wire them to ``timer``."""
    job_memory = gr.BrowserState(None, storage_key="phi3space-followed-job")
    gr.Markdown("### Your runs", elem_id="runs-title")
    progress = gr.HTML(progress_html(None, None, RunState(), None), elem_id="job-progress")
    with gr.Row(elem_id="job-buttons"):
        stop_btn = gr.Button("Stop", variant="stop", interactive=False, elem_id="stop", min_width=120)
        resume_btn = gr.Button("Resume from last checkpoint", visible=False, elem_id="resume", min_width=160)
        push_btn = gr.Button("Push again", visible=False, elem_id="push-again", min_width=120)
        chat_btn = gr.Button("Chat with this run", interactive=False, elem_id="open-chat", min_width=160)
    note = gr.Markdown(actions_note(None, None, None), elem_id="actions-note")
    space = get_runner().space
    with gr.Accordion("Merge into the full model", open=False, elem_id="merge-box"):
        gr.Markdown("Folds the run's adapter into its base model (16-bit): a standalone model that loads without peft "
                    "(about 7.6 GB for Phi-3-mini). It runs as a job, like training; its files are offered for "
                    "download here when it is done" + (", and pushed to a Hub repo of yours." if space else
                                                        ", and with 'Push to the Hub' uploaded to a repo of yours."))
        with gr.Row(equal_height=True):
            merge_push, merge_repo, merge_private = hub_destination("merge", space, "you/my-merged-model")
            merge_btn = gr.Button("Merge", variant="primary", interactive=False, scale=1, elem_id="merge",
                                  min_width=140)
    with gr.Row(elem_id="job-charts"):
        plot = gr.LinePlot(x="step", y="loss", color="split", label="Loss", elem_id="loss-plot", min_width=300,
                           color_map=LOSS_COLOURS)
        log = gr.Textbox(label="Log", lines=12, max_lines=12, autoscroll=True, interactive=False, elem_id="job-log",
                         min_width=300)
    with gr.Row(elem_id="reward-charts"):
        rewards = [gr.LinePlot(x="step", y=metric, color="split", label=f"Reward {metric} (DPO)", visible=False,
                               elem_id=f"reward-{metric}-plot", min_width=300, color_map=LOSS_COLOURS)
                   for metric in REWARD_METRICS]
    picker = gr.Dropdown(label="Follow job", choices=[], interactive=True, elem_id="job-picker")
    table = gr.Dataframe(headers=TABLE_COLUMNS, label="All your runs", interactive=False, wrap=True,
                         column_widths=TABLE_WIDTHS, elem_id="runs-table")
    outputs = [follower, seen, job_memory, progress, plot, log, table, picker, stop_btn, resume_btn, chat_btn, merge_btn,
               push_btn, *rewards, note, timer]
    timer.tick(poll, [follower, seen], outputs, show_progress="hidden", queue=False, api_visibility=UI_ONLY)
    # An action that starts or picks a job forgets what was drawn (seen: None): the page asks every second again.
    seen.change(wake, seen, timer, show_progress="hidden", queue=False, api_visibility=UI_ONLY)
    picker.input(pick, [picker, follower], [follower, seen], api_visibility=UI_ONLY)
    stop_btn.click(stop, follower, None, api_visibility=UI_ONLY)
    resume_btn.click(resume, follower, seen, api_visibility=UI_ONLY)
    push_btn.click(push_again_click, follower, seen, api_visibility=UI_ONLY)
    merge_btn.click(merge, [follower, merge_push, merge_repo, merge_private], [follower, seen], api_visibility=UI_ONLY)
    return JobsView(follower, job_memory, picker, chat_btn, outputs)
