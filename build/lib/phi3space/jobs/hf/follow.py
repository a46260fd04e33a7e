"""Following a Hugging Face job to its end, as the service runs it: SCHEDULING (its status message shown), then its
log stream mirrored into the local run folder, then the platform's verdict (verdict.py).

``inspect_job`` decides: a log stream that answers an error (404 while the job is still being scheduled), ends
before the job does, or drops is asked for again while the job's stage is not a final one; only ``inspect_job``
answering 404 means the job is gone. While the log cannot be read (the log service answering 503), both are asked
with backoff (``Pace``: a few calls a minute); a job that ended with its log still unreadable gets its last word
from what it pushed (pushed.py) or from its stage, never a failure for a run that completed.
"""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass

from phi3space.errors import AuthError, HubError, JobsError, scrub
from phi3space.hub.errors import http_status, hub_error, retry_base_s, short_error, with_retries
from phi3space.jobs.backend import Verdict
from phi3space.jobs.hf.platform import JobRef
from phi3space.jobs.hf.protocol import parse_event, parse_exit
from phi3space.jobs.hf.verdict import last_word
from phi3space.jobs.spec import JobConfig
from phi3space.run import EventWriter, RunDir, RunState

TERMINAL = ("COMPLETED", "CANCELED", "ERROR", "DELETED")
POLL_S = 5.0  # how often a job being scheduled, or one whose log stream dropped, is asked about
CAP_S = 30.0  # the longest wait between tries while the platform fails (at the default first wait, 2 s)
MIN_WAIT_S = 0.05  # never a busy loop, even with PHI3SPACE_RETRY_BASE_S=0

# The newest event mirrored per events file and job in this process: two followers of one job (a restarted runner
# beside the thread of the old one) never write an event twice. A file replaced since (a wiped disk) starts afresh.
_mirrored: dict[tuple[str, int | None, str], int] = {}
_mirrored_lock = threading.Lock()


class Mirror:
    """Follows one job's log stream into a local run folder: events to its events, other lines to its log."""

    def __init__(self, run: RunDir, ref: JobRef, writer: EventWriter | None = None):
        self.run, self.ref = run, ref
        self.writer = writer or run.writer()
        self.exit_code: int | None = None  # what the job's command reported, once it did
        self.most_lines = 0  # the most lines one stream brought (each replays the job's output from its first line)
        self.logged = 0  # the log lines (not events) written to the run's log so far
        try:
            inode = run.events.stat().st_ino
        except OSError:
            inode = None
        self.key = (str(run.path.resolve()), inode, ref.id)
        with _mirrored_lock:
            if self.key not in _mirrored:
                events, _ = run.read_events()
                _mirrored[self.key] = max((e["seq"] for e in events if e.get("job") == ref.id
                                           and isinstance(e.get("seq"), int)), default=0)

    def follow(self, token: str | None, stop: threading.Event | None = None) -> None:
        """Mirror the job's output until its log stream ends or ``stop`` is set. Each stream replays from the job's
        first line: events already mirrored are skipped, and so are the log lines an earlier stream wrote (the log is
        only appended to, so a stream that fails keeps what was there)."""
        from huggingface_hub import HfApi

        lines = HfApi().fetch_job_logs(job_id=self.ref.id, namespace=self.ref.namespace, follow=True, token=token)
        count = seen = 0
        log = None
        try:
            for line in lines:
                if stop is not None and stop.is_set():
                    return
                count += 1
                self.most_lines = max(self.most_lines, count)
                event = parse_event(line)
                if event is not None:
                    self._append(event)
                    continue
                code = parse_exit(line)
                if code is not None:
                    self.exit_code = code
                seen += 1
                if seen <= self.logged:
                    continue
                if log is None:  # this follower's first line starts the file afresh
                    log = self.run.log.open("ab" if self.logged else "wb")
                log.write((scrub(line) + "\n").encode("utf-8", "replace"))
                log.flush()
                self.logged += 1
        finally:
            if log is not None:
                log.close()

    def _append(self, event: dict) -> None:
        with _mirrored_lock:
            if event["seq"] <= _mirrored[self.key]:
                return
            fields = {k: v for k, v in event.items() if k != "type"}
            fields["job"] = self.ref.id
            if event["type"] == "run_finished":  # the job's folder is gone with it: its adapter is the pushed one
                pushed = self.run.state().adapter_repo
                fields["adapter"] = pushed if pushed and fields.get("status") != "failed" else None
            self.writer.emit(event["type"], **fields)
            _mirrored[self.key] = event["seq"]


def inspect(ref: JobRef, token: str | None, attempts: int = 4):
    """The job as ``inspect_job`` sees it (transient failures tried ``attempts`` times); None when it answers 404:
    the job is gone.

    Raises:
        AuthError, JobsError: the token was refused, or the platform could not be asked.
    """
    from huggingface_hub import HfApi

    try:
        return with_retries(lambda: HfApi().inspect_job(job_id=ref.id, namespace=ref.namespace, token=token),
                            f"read the state of job {ref}", attempts=attempts)
    except Exception as exc:
        if http_status(exc) == 404:
            return None
        mapped = hub_error(exc, f"read the state of job {ref}", error=JobsError)
        if mapped is None:
            raise
        raise mapped from None


def cancel(ref: JobRef, token: str | None) -> None:
    """Ask the platform to cancel the job (it ends a few seconds later: following tells)."""
    from huggingface_hub import HfApi

    from phi3space.hub.errors import call

    call(lambda: HfApi().cancel_job(job_id=ref.id, namespace=ref.namespace, token=token), f"cancel job {ref}", JobsError)


class Pace:
    """How soon the platform is asked again while it fails (a log stream that answers an error or brings nothing new,
    inspect_job failing): ``first_s`` (``retry_base_s``, 2 s), doubled after each failure up to ``CAP_S`` (scaled
    with it), back to at once after a success. A failing round asks inspect_job and the log once each: a follower
    of a failing log service makes a few calls a minute (a free account has about 1000 Hub calls per 5 minutes,
    shared with the job's own pushes)."""

    def __init__(self):
        self.first_s = max(MIN_WAIT_S, retry_base_s())
        self.cap_s = max(self.first_s, CAP_S * self.first_s / 2)
        self.failures = 0

    def failed(self) -> float:
        """The wait before the next try, after one more failure."""
        wait = min(self.cap_s, self.first_s * 2 ** self.failures)
        self.failures += 1
        return wait

    def ok(self) -> None:
        """A success: the next failure waits ``first_s`` again."""
        self.failures = 0


def end_wait_s() -> float:
    """How long a log that cannot be read is asked for after its job ended, before the run's end is taken from what
    the job pushed (a training run) or from the platform's stage: two minutes at the default pace."""
    return 60 * Pace().first_s


def follow_to_end(ref: JobRef, token: str | None, run: RunDir, writer: EventWriter, cfg: JobConfig | None = None,
                  stop: threading.Event | None = None, on_interrupt: Callable[[], None] | None = None,
                  retry_s: float = POLL_S, trains: bool = True, timeout: str | None = None) -> bool:
    """Follow the job until it ends: its status message while it is being scheduled, then its output (mirrored),
    then the platform's last word where the events lack one. Returns False when ``stop`` was set first. Ctrl-C
    calls ``on_interrupt`` once, and following goes on until the job has ended. ``timeout``: an eval or export
    job's time limit (a training job's is its config's).

    While the log cannot be read the platform is asked with backoff (``Pace``); once the job has ended, its log is
    asked for ``end_wait_s()`` more, then a training run's end is read from the adapter it pushed (pushed.py).

    Raises:
        AuthError: the token was refused (expired): follow again with a new one.
    """
    mirror, pace = Mirror(run, ref, writer), Pace()
    shown, ended_at, unreadable = None, None, None
    while stop is None or not stop.is_set():
        wait = retry_s
        try:
            info = inspect(ref, token, attempts=1)  # this loop paces its retries
            if info is None:  # only inspect_job saying 404 means the job is gone
                gone = types.SimpleNamespace(status=types.SimpleNamespace(stage="DELETED", message=None),
                                             url=f"{ref}", durations=None)
                _write(writer, last_word(gone, run.state(), cfg, trains=trains), run.state())
                return True
            stage = str(info.status.stage)
            if stage == "SCHEDULING":
                pace.ok()
                said = f"Hugging Face Jobs: scheduling ({info.status.message or 'waiting for the hardware'})"
                if said != shown:
                    writer.emit("log", message=said, job=str(ref))
                    shown = said
            else:
                final = stage in TERMINAL
                read = _mirror(mirror, token, stop, ref)  # a final job's stream replays its whole output, then ends
                if stop is not None and stop.is_set():
                    break
                if final and read.whole:  # read to its end after the job ended: its whole output is mirrored
                    state = _this_attempt(run.state(), info)
                    _write(writer, last_word(info, state, cfg, mirror.exit_code, trains, timeout), state)
                    return True
                if read.new:
                    pace.ok()
                    continue  # the stream ended before the job did, or the job has just ended: ask again at once
                unreadable = read.error or unreadable
                if final:
                    ended_at = time.monotonic() if ended_at is None else ended_at
                    if time.monotonic() - ended_at >= end_wait_s():
                        _end_unread(ref, info, run, writer, token, cfg, trains, timeout, unreadable)
                        return True
                wait = pace.failed()
        except KeyboardInterrupt:
            if on_interrupt is None:
                raise
            on_interrupt()
            on_interrupt = None  # a second Ctrl-C leaves at once
            continue
        except AuthError:
            raise
        except (JobsError, HubError) as exc:  # the platform (or the Hub) could not be asked: again, later and later
            print(f"phi3space jobs: {exc.message}", flush=True)
            wait = pace.failed()
        try:
            if stop is None:
                time.sleep(wait)
            else:
                stop.wait(wait)
        except KeyboardInterrupt:
            if on_interrupt is None:
                raise
            on_interrupt()
            on_interrupt = None
    return False


def _end_unread(ref: JobRef, info, run: RunDir, writer: EventWriter, token: str | None, cfg: JobConfig | None,
                trains: bool, timeout: str | None, unreadable: str | None) -> None:
    """The last word of a job that ended while its log could not be read: a training run that completed, from the
    adapter it pushed; an eval or export whose command exited 0, completed; else the platform's stage."""
    from phi3space.jobs.hf.pushed import pushed_adapter

    why = f"its log could not be read ({unreadable or 'it brought no output'})"
    state = _this_attempt(run.state(), info)
    if state.final:
        return
    completed = str(info.status.stage) == "COMPLETED"
    if completed and trains:
        pushed = pushed_adapter(info, token)
        if pushed is None:
            verdict = Verdict("failed", "jobs", f"the Hugging Face job completed, but {why} and its repo holds no "
                                                "adapter from it", f"See its logs: {info.url}")
        else:
            writer.emit("log", message=f"the Hugging Face job completed; {why}: its end is read from the adapter it "
                                       f"pushed to {pushed.repo_id} (commit {pushed.commit[:12]})", job=str(ref))
            writer.emit("push", what="adapter", repo_id=pushed.repo_id, url=pushed.url, commit=pushed.commit)
            state = run.state()
            verdict = Verdict("completed", adapter=pushed.repo_id)
    elif completed:  # an eval or export whose command exited 0 (the wrapper passes its code on)
        writer.emit("log", message=f"the Hugging Face job completed; {why}: its results are in its logs, {info.url}",
                    job=str(ref))
        verdict = Verdict("completed")
    else:
        writer.emit("log", message=f"{why}; the platform says the job ended {info.status.stage}", job=str(ref))
        verdict = last_word(info, state, cfg, None, trains, timeout)
    _write(writer, verdict, state)


@dataclass
class Read:
    """What one log stream brought: more lines than any earlier stream of the job (``new``; each replays from its
    first line), the whole output of a job (``whole``: the stream ended by itself), or the error it answered."""

    new: bool = False
    whole: bool = False
    error: str | None = None


def _mirror(mirror: Mirror, token: str | None, stop: threading.Event | None, ref: JobRef) -> Read:
    """One log stream, mirrored; its failure is not the job's: the caller asks inspect_job what became of it."""
    before = mirror.most_lines
    try:
        mirror.follow(token, stop)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        mapped = hub_error(exc, f"follow the log of job {ref}", error=JobsError)
        if mapped is None:
            raise
        if isinstance(mapped, AuthError):
            raise mapped from None
        status = http_status(exc)
        return Read(new=mirror.most_lines > before, error=f"HTTP {status}" if status else short_error(exc))
    return Read(new=mirror.most_lines > before, whole=True)


def _write(writer: EventWriter, verdict: Verdict | None, state: RunState) -> None:
    if verdict is not None:
        verdict.write(writer, state)


def _this_attempt(state: RunState, info) -> RunState:
    """``state``, or a blank one when its events are an earlier attempt's (this job never started training)."""
    if info.created_at and (state.started or 0) < info.created_at.timestamp() - 5:
        return RunState(step=state.step, checkpoint_url=state.checkpoint_url)
    return state
