"""What the web app shares across visitors (the job runner, chat engines) and who a visitor is.

Nothing here imports gradio: handlers pass in the OAuth objects gradio injected (``profile.username``,
``oauth_token.token``), and get back plain values or typed errors.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass

from phi3space.errors import AuthError, Phi3SpaceError, SignInNeeded, register_secret
from phi3space.hub.auth import acting_token, real_token
from phi3space.hub.space import on_space
from phi3space.jobs.scheduler import JobRunner
from phi3space.state import RunState

LOCAL_OWNER = "local"

_runner: JobRunner | None = None
_built_here = False  # whether _runner is the one get_runner built (and so ours to shut down when replaced)
_runner_lock = threading.Lock()


def get_runner() -> JobRunner:
    """The process's one job runner (the queue is per GPU by nature); built on first use."""
    global _runner, _built_here
    with _runner_lock:
        if _runner is None:
            _runner, _built_here = JobRunner(), True
        return _runner


def set_runner(runner: JobRunner | None) -> None:
    """Use another runner (tests), or None to build a fresh one on next use. A runner get_runner built is shut down
    when replaced: it holds its data folder's lock, so a fresh one on the same folder would be refused."""
    global _runner, _built_here
    with _runner_lock:
        if _built_here and _runner is not None and _runner is not runner:
            _runner.shutdown()
        _runner, _built_here = runner, False


def run_status(job) -> tuple[str, RunState]:
    """A job's status and state as the page shows them (JobRunner.said): a run whose events hold its last word shows
    it at once, while its process may still be exiting; /job_status keeps the runner's, which waits for the process."""
    return get_runner().said(job)


def acted_on(job, jobs: list) -> tuple:
    """The training run the page's actions (Evaluate, Export, Merge, Chat) act on while ``job`` is followed: the run
    itself, or the run an eval, export or merge job read; and its (page) state. (None, None) when there is none."""
    from phi3space.jobs.followups import source_of

    run = source_of(job, jobs, lambda j: run_status(j)[1]) if job is not None else None
    return (run, run_status(run)[1]) if run is not None else (None, None)


def actions_note(job, run, state: RunState | None) -> str:
    """Why the actions on a run are (not) there, in the page's words (markdown)."""
    if job is None:
        return "Evaluate, Export, Merge and Chat act on a finished run: start one, or pick one under 'Follow job'."
    if job.kind == "plan":
        return "A plan measures a run before it starts: press **Start** to train it, then act on the run."
    if run is None:
        return "The run this job acted on is no longer in your list: pick a finished run under 'Follow job'."
    name = f"**{run.name}** ({run.id})"
    if state.has_adapter:
        return f"Evaluate, Export, Merge and Chat act on {name}."
    if state.status in ("queued", "running"):
        return f"Evaluate, Export, Merge and Chat unlock when {name} finishes (it is {state.status})."
    return f"{name} ended without an adapter ({state.status}): resume it from its last checkpoint, or start again."


def demo_settings() -> dict | None:
    """The form's starting values when the page opens with the demo (phi3space.demo: off a Space, on a machine
    without a CUDA GPU, or PHI3SPACE_DEMO=1), its tiny base model built on the way under the data folder; None
    otherwise (the page then starts from RunConfig's defaults, Phi-3-mini)."""
    from phi3space import demo
    from phi3space.engine.hardware import gpu_count

    runner = get_runner()
    if not demo.wanted(runner.space, gpu_count()):
        return None
    demo.prepare(runner.root)
    return demo.settings(runner.root)


@dataclass(frozen=True)
class Visitor:
    """Who is using the page: their name as an owner of jobs, their token, and when a page sign-in expires."""

    owner: str | None  # None: an anonymous visitor of a public Space
    token: str | None  # the visitor's own token; None off a Space means "use HF_TOKEN"
    expires_at: float | None = None  # when a page sign-in's token expires (Unix time); None when unknown

    def hub_token(self, space: bool | None = None) -> str | None:
        """The token for Hub work on this visitor's behalf (phi3space.hub.auth.acting_token)."""
        return acting_token(self.token, space)

    def require_owner(self) -> str:
        """The visitor's owner name.

        Raises:
            SignInNeeded: an anonymous visitor."""
        if self.owner is None:
            raise SignInNeeded("sign in with Hugging Face to train and to see your jobs")
        return self.owner


def identify(profile, oauth_token, space: bool | None = None) -> Visitor:
    """The visitor behind a request: the OAuth profile's username, else the owner of the token an API client
    passed, else (off a Space) the local owner. gradio's local mock token is not a token."""
    space = on_space() if space is None else space
    token = real_token(getattr(oauth_token, "token", None))
    register_secret(token)
    expires_at = (getattr(oauth_token, "expires_at", None) or None) if token else None  # API clients: 0, unknown
    if profile is not None and getattr(profile, "username", None):
        return _seen(Visitor(profile.username, token, expires_at))
    if token:
        from phi3space.hub.access import whoami

        try:
            return _seen(Visitor(whoami(token)["name"], token))
        except AuthError:
            raise AuthError("the Hub did not accept your token", "Sign in again, or pass a valid token (oauth_token=...).") from None
    return Visitor(None if space else LOCAL_OWNER, None)


def _seen(visitor: Visitor) -> Visitor:
    """A visitor with a token: their runs on Hugging Face Jobs can be followed (again) with it."""
    if visitor.token and _runner is not None:
        _runner.seen(visitor.owner, visitor.token)
    return visitor


_restored: set[str] = set()  # owners whose Hub runs this process has brought back
_restore_lock = threading.Lock()


def signed_in(profile, oauth_token) -> Visitor:
    """``identify``, and on a Space a signed-in visitor's first request after a restart also brings back their
    runs from the Hub (once per process; a Hub that cannot be reached is asked again next time)."""
    visitor = identify(profile, oauth_token)
    runner = get_runner()
    if not (runner.space and visitor.owner and visitor.token) or visitor.owner in _restored:
        return visitor
    with _restore_lock:
        if visitor.owner not in _restored:
            try:
                runner.restore_from_hub(visitor.owner, visitor.token)
                _restored.add(visitor.owner)
            except Phi3SpaceError as exc:
                print(f"phi3space: could not read {visitor.owner}'s runs from the Hub: {exc.message}", file=sys.stderr)
    return visitor


def check_inputs_allowed(refs: dict[str, str], owner: str | None) -> None:
    """On a Space, visitors give Hub IDs (or their own uploads): paths of the server are refused (the submit pipeline
    checks the same again)."""
    from phi3space.jobs.submit import check_inputs_allowed as check

    runner = get_runner()
    check(refs, (runner.data.uploads(owner or "anonymous"),), runner.space)
