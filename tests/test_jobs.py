"""Job store and runner with a stand-in trainer (a few lines of Python that write events and exit as told),
so that the queue, Stop, status decisions, recovery and token handling are checked in seconds."""

import json
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
from helpers import fake_run_config as cfg
from helpers import fake_started as started
from helpers import job_status as status_of
from helpers import wait_job as wait

from phi3space.errors import AuthError, Cancelled, ConfigError, HubError
from phi3space.jobs.local import job_env, last_word
from phi3space.jobs.scheduler import JobRunner
from phi3space.jobs.store import Job, JobStore
from phi3space.run import RunDir, RunState


@pytest.fixture
def fake(fake_trainer):
    return lambda cfg_path: [sys.executable, str(fake_trainer), str(cfg_path)]


@pytest.fixture
def make_runner(tmp_path, fake):
    runners = []

    def make(**kw):
        kw.setdefault("slots", 1)
        kw.setdefault("grace_s", 5)
        kw.setdefault("space", False)
        runner = JobRunner(tmp_path / "data", poll_s=0.05, command=fake, **kw)
        runners.append(runner)
        return runner

    yield make
    for r in runners:
        r.shutdown()


def test_store_round_trip_and_owner_filter(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    store.add(Job(id="a", owner="alice", name="n", run_dir="/r/a"))
    store.add(Job(id="b", owner="bob", name="n", run_dir="/r/b"))
    store.update("a", phase="running", pid=12, slot=0, cancel_requested=True)
    a = store.get("a")
    assert (a.phase, a.pid, a.slot, a.cancel_requested) == ("running", 12, 0, True)
    assert [j.id for j in store.list("bob")] == ["b"]
    assert [j.id for j in store.list(phase=("queued",))] == ["b"]
    with pytest.raises(ValueError, match="not a job column"):
        store.update("a", status="completed")  # the store keeps scheduling facts only


FINISHED = {"type": "run_finished", "status": "completed", "time": 10}


@pytest.mark.parametrize("code, events, cancel, expected", [
    (0, [FINISHED], False, "completed"),
    (None, [FINISHED], False, "completed"),  # ended while the server was down: its events tell
    (0, [{"type": "progress", "step": 1}], False, "failed"),  # exit 0 but the run never said it finished
    (1, [FINISHED], False, "failed"),  # finished, then crashed
    (130, [{"type": "run_finished", "status": "cancelled"}], True, "cancelled"),
    (-9, [], True, "cancelled"),
    (-9, [], False, "failed"),
    (None, [{"type": "run_started"}], False, "failed"),
    (2, [{"type": "error", "kind": "data", "message": "bad rows", "hint": "fix"},
         {"type": "run_finished", "status": "failed"}], False, "failed"),
])
def test_the_supervisors_last_word_needs_both_exit_code_and_events(code, events, cancel, expected, tmp_path):
    run = RunDir(tmp_path / "run")
    for e in events:
        run.append(e["type"], **{k: v for k, v in e.items() if k not in ("type", "time")})
    verdict = last_word(code, run.state(), cancel)
    if verdict is not None:
        verdict.write(run.writer(), run.state())  # through the one writer of last words
    state = run.state()
    assert state.status == expected
    if expected == "failed":
        assert state.error["message"]
    if code == 2:
        assert state.error == {"kind": "data", "message": "bad rows", "hint": "fix"}  # its own word stands
    if code == -9 and not cancel:
        assert "signal 9" in state.error["message"] and "memory" in state.error["hint"]
    if code is None and expected == "failed":
        assert "while the server was down" in state.error["message"]


def test_an_earlier_attempts_last_word_does_not_count():
    state = RunState.from_events([{"type": "run_finished", "status": "failed", "time": 5}])
    assert last_word(-9, state, False, since=8).message == "the training process was killed by signal 9"


@pytest.mark.parametrize("raised, status", [(None, "completed"), (HubError("push to me/x failed", "Push it later."),
                                                                     "failed"), (Cancelled("stopped"), "cancelled")])
def test_a_job_that_does_not_train_writes_its_stages_and_its_last_word(tmp_path, raised, status):
    run, heard, cleared = RunDir(tmp_path), [], []
    with pytest.raises(type(raised)) if raised else nullcontext():
        with run.writer().stages("merge", 3, on_stage=heard.append, on_failed=lambda: cleared.append(True),
                                 adapter="me/a") as stage:
            stage("loading")
            stage("merging")
            if raised:
                raise raised
            stage.model = "https://hub/me/a-merged"
    events, _ = run.read_events()
    assert events[0]["type"] == "run_started" and events[0]["adapter"] == "me/a" and events[0]["max_steps"] == 3
    assert [(e["step"], e["max_steps"], e["stage"]) for e in events if e["type"] == "progress"] == \
        [(1, 3, "loading"), (2, 3, "merging")] and heard == ["loading", "merging"]
    state = run.state()
    assert state.status == status and state.step == 2
    assert events[-1].get("model") == ("https://hub/me/a-merged" if raised is None else None)
    assert (state.error or {}).get("hint") == ("Push it later." if status == "failed" else None)
    assert cleared == ([True] if status == "failed" else [])  # a cancelled job keeps what it made


@pytest.mark.parametrize("mode, status", [("complete", "completed"), ("exit0-no-finish", "failed"),
                                          ("crash-after-finish", "failed")])
def test_runner_decides_from_the_process(make_runner, mode, status):
    runner = make_runner()
    s = wait(runner, runner.submit(cfg(mode), "me").id)
    assert s["status"] == status
    job = runner.get(s["id"], "me")
    if status == "completed":
        assert s["metrics"] == {"train_loss": 1.5} and s["adapter"] == job.run_dir and job.exit_code == 0
    else:  # the supervisor wrote the last word into the run's own events
        assert RunDir(job.run_dir).state().status == "failed" and s["error"]["kind"] == "crash"
    assert Path(job.run_dir).parent.name == "me"  # the server chose the run folder


def whole_checkpoint(run: RunDir, step: int):
    """A checkpoint as the Trainer leaves it once saved: adapter weights, and the trainer state written last."""
    run.checkpoint(step).mkdir(parents=True)
    (run.checkpoint(step) / run.ADAPTER_WEIGHTS).write_bytes(b"weights")
    (run.checkpoint(step) / run.TRAINER_STATE).write_text(json.dumps({"global_step": step}))


def test_job_status_names_the_adapters_hub_repo_never_a_checkpoint_push(make_runner):
    runner = make_runner()
    s = wait(runner, runner.submit(cfg("pushed"), "me").id)
    assert (s["status"], s["adapter"], s["repo_url"]) == ("completed", "me/x", "https://hub/me/x")
    s = wait(runner, runner.submit(cfg("checkpoint-pushed-then-fail"), "me").id)
    assert (s["status"], s["adapter"], s["repo_url"]) == ("failed", None, None)
    assert s["checkpoint_url"].endswith("/tree/checkpoints") and s["error"]["kind"] == "oom"


def test_one_job_at_a_time_queue_positions_and_stop(make_runner):
    runner = make_runner()
    first, second, third = (runner.submit(cfg("wait"), "me") for _ in range(3))
    wait(runner, first.id, until=started)
    assert [status_of(runner, j.id) for j in (second, third)] == ["queued", "queued"]
    assert (runner.queue_position(second.id), runner.queue_position(third.id)) == (1, 2)

    runner.cancel(second.id, "me")
    assert status_of(runner, second.id) == "cancelled"  # a queued job is dropped at once
    assert RunDir(second.run_dir).state().status == "cancelled"  # and its run's file says so
    assert runner.queue_position(third.id) == 1
    runner.cancel(first.id, "me")
    assert wait(runner, first.id)["status"] == "cancelled"
    assert runner.get(first.id, "me").exit_code == 130  # it caught SIGTERM and ended itself
    wait(runner, third.id, until=started)
    runner.cancel(third.id, "me")
    assert wait(runner, third.id)["status"] == "cancelled"


def test_stop_escalates_to_sigkill_after_the_grace_period(make_runner):
    runner = make_runner(grace_s=0.5)
    job = runner.submit(cfg("stubborn"), "me")
    wait(runner, job.id, until=started)
    t0 = time.time()
    runner.cancel(job.id, "me")
    assert wait(runner, job.id)["status"] == "cancelled"
    assert runner.get(job.id, "me").exit_code == -signal.SIGKILL
    assert time.time() - t0 >= 0.5


def test_visitors_cannot_see_or_cancel_each_others_jobs(make_runner):
    runner = make_runner()
    job = runner.submit(cfg("wait"), "alice")
    assert runner.list("bob") == []
    for action in (runner.get, runner.cancel):
        with pytest.raises(ConfigError, match="no job"):
            action(job.id, "bob")
    runner.cancel(job.id, "alice")


def test_token_reaches_the_trainer_only_through_its_environment(make_runner, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_OwnerTokenOfTheSpace123")
    token = "hf_VisitorsOwnToken456789"
    runner = make_runner()
    s = wait(runner, runner.submit(cfg("complete", output={"push_to": "alice/x"}), "alice", token).id, "alice")
    run = RunDir(s["run_dir"])
    seen = json.loads((run.path / "seen.json").read_text())
    assert seen["hf_token"] == token
    assert not any(token in a for a in seen["argv"])
    for path in (runner.store.path, run.config, run.log, run.events):
        assert token.encode() not in path.read_bytes()
    assert runner.get(s["id"], "alice").needs_token


def test_on_a_space_the_owners_token_never_reaches_a_visitors_job(make_runner, monkeypatch, hub):
    monkeypatch.setenv("HF_TOKEN", "hf_OwnerTokenOfTheSpace123")
    hub.add_user("visitor", "tok-visitor-0123456789")
    runner = make_runner(space=True)
    s = wait(runner, runner.submit(cfg("complete"), "visitor", "tok-visitor-0123456789").id, "visitor")
    assert not Path(s["run_dir"]).is_absolute() and s["adapter"] == s["id"]  # no server folder is shown to a visitor
    seen = json.loads((runner.get(s["id"], "visitor").run.path / "seen.json").read_text())
    assert seen["hf_token"] == "tok-visitor-0123456789" and not Path(seen["hf_token_path"]).exists()
    assert not [r for r in hub.requests if r.token == "hf_OwnerTokenOfTheSpace123"]
    for push_to in (None, "visitor/x"):  # on a Space every run goes to the visitor's account: a sign-in is needed
        with pytest.raises(AuthError, match="sign in"):
            runner.submit(cfg("complete", output={"push_to": push_to}), "visitor", None)


def test_off_a_space_the_local_token_is_used():
    env = job_env(None, space=False, base={"HF_TOKEN": "hf_LocalToken1234"})
    assert env["HF_TOKEN"] == "hf_LocalToken1234" and env["PYTHONUNBUFFERED"] == "1"
    assert "PYTHONPATH" not in env  # the job finds the package as the server does
    assert job_env("hf_Visitor123456", space=True, base={"HF_TOKEN": "hf_LocalToken1234"})["HF_TOKEN"] == "hf_Visitor123456"


def test_restart_writes_the_last_word_of_lost_jobs_into_their_runs(tmp_path, make_runner):
    store = JobStore(tmp_path / "data" / "jobs.sqlite")
    lost = RunDir(tmp_path / "data" / "runs" / "me" / "lost")
    whole_checkpoint(lost, 10)
    lost.append("run_started", max_steps=20)
    lost.append("progress", step=10, max_steps=20, loss=1.0)
    done = RunDir(tmp_path / "data" / "runs" / "me" / "done")
    done.append("run_started", max_steps=20)
    done.append("run_finished", status="completed", step=20, adapter=str(done.path), metrics={"train_loss": 0.5})
    tok = RunDir(tmp_path / "data" / "runs" / "me" / "tok")
    store.add(Job(id="lost", owner="me", name="n", run_dir=str(lost.path), phase="running", pid=2**22 + 12345, started=1))
    store.add(Job(id="done", owner="me", name="n", run_dir=str(done.path), phase="running", pid=2**22 + 12346, started=1))
    store.add(Job(id="tok", owner="me", name="n", run_dir=str(tok.path), needs_token=True))
    runner = make_runner()
    s = runner.state(runner.get("lost", "me"))
    assert s["status"] == "failed" and "while the server was down" in s["error"]["message"] and s["step"] == 10
    assert lost.state().status == "failed" and lost.latest_checkpoint() == lost.checkpoint(10)  # the file says so
    s = runner.state(runner.get("done", "me"))  # it finished while no server watched: its events say completed
    assert (s["status"], s["adapter"], s["error"]) == ("completed", str(done.path), None)
    assert status_of(runner, "tok") == "failed"  # its token was in memory only: it cannot start now
    assert "never stored" in tok.state().error["hint"]


def test_a_resumed_job_that_finishes_before_popen_returns_is_completed(make_runner, monkeypatch):
    """On a busy machine the server thread may get the CPU back only after a fast job has finished: its own last
    word is newer than the start of that attempt, so it counts (it was taken as an earlier attempt's)."""
    import subprocess as sp

    from phi3space.jobs import local as jobs_mod

    runner = make_runner()
    job = runner.submit(cfg("checkpoint-then-crash"), "me")
    assert wait(runner, job.id)["status"] == "failed"

    class SlowToReturn(sp.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.wait()  # the child writes its last word before the server notes the start

    monkeypatch.setattr(jobs_mod.subprocess, "Popen", SlowToReturn)
    runner.resume(job.id, "me")
    assert wait(runner, job.id)["status"] == "completed"


def test_a_second_server_on_the_same_data_folder_is_refused(make_runner, tmp_path):
    from phi3space.datadir import DataDirBusy

    make_runner()
    with pytest.raises(DataDirBusy, match="in use by pid"):
        JobRunner(tmp_path / "data", space=False)


def test_a_failed_job_resumes_from_its_checkpoint(make_runner):
    runner = make_runner()
    job = runner.submit(cfg("checkpoint-then-crash"), "me", token="tok-resume-0123456789")
    assert wait(runner, job.id)["status"] == "failed"
    with pytest.raises(ConfigError, match="no job"):
        runner.resume(job.id, "someone-else")
    job = runner.resume(job.id, "me", token="tok-resume-0123456789")
    assert status_of(runner, job.id) in ("queued", "running") and job.resume
    done = wait(runner, job.id)
    assert done["status"] == "completed" and done["error"] is None and runner.get(job.id, "me").exit_code == 0
    seen = json.loads((RunDir(done["run_dir"]).path / "seen.json").read_text())
    assert "--resume" in seen["argv"] and seen["hf_token"] == "tok-resume-0123456789"
    assert "tok-resume-0123456789" not in " ".join(seen["argv"])
    with pytest.raises(ConfigError, match="only a failed or stopped job"):
        runner.resume(job.id, "me")


def test_a_job_without_a_checkpoint_cannot_resume(make_runner):
    runner = make_runner()
    job = runner.submit(cfg("exit0-no-finish"), "me")
    assert wait(runner, job.id)["status"] == "failed"
    with pytest.raises(ConfigError, match="saved no checkpoint"):
        runner.resume(job.id, "me")


def test_a_store_from_an_older_version_gains_new_columns(tmp_path):
    import sqlite3

    path = tmp_path / "jobs.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE jobs (id, owner, name, run_dir, status, created, started, finished, pid, exit_code, "
                   "cancel_requested, needs_token, push_to, error, metrics, adapter, repo_url, PRIMARY KEY (id))")
        db.execute("INSERT INTO jobs (id, owner, name, run_dir, status, created, cancel_requested, needs_token) "
                   "VALUES ('old', 'me', 'n', '/tmp/x', 'completed', 1.0, 0, 0)")
    store = JobStore(path)
    job = store.get("old")
    assert job.phase == "done" and job.resume is False
    store.add(Job(id="new", owner="me", name="n", run_dir="/tmp/y"))
    assert store.get("new").phase == "queued"


def test_one_slot_per_gpu_unless_told(tmp_path, monkeypatch):
    from phi3space.jobs import scheduler as jobs

    monkeypatch.delenv("PHI3SPACE_SLOTS", raising=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-1)'\necho 'GPU 1: NVIDIA H200 (UUID: GPU-2)'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    assert jobs.gpu_count() == 2
    runner = JobRunner(tmp_path / "data", space=False)
    try:
        assert runner.slots == 2
    finally:
        runner.shutdown()
    monkeypatch.setenv("PHI3SPACE_SLOTS", "1")
    runner = JobRunner(tmp_path / "data2", space=False)
    try:
        assert runner.slots == 1
    finally:
        runner.shutdown()


def test_a_corrupt_job_store_is_set_aside_and_the_runs_are_listed_again(tmp_path, make_runner):
    root = tmp_path / "data"
    done = RunDir(root / "runs" / "alice" / "job1")
    done.path.mkdir(parents=True)
    done.config.write_text("data: {dataset: qa.jsonl}\n")
    done.append("run_started", max_steps=4)
    done.append("run_finished", status="completed", step=4, adapter=str(done.path), metrics={"train_loss": 0.5})
    (root / "jobs.sqlite").write_bytes(b"this is not a database" * 100)
    runner = make_runner()
    assert list(root.glob("jobs.sqlite.corrupt-*"))  # kept for a look, out of the way
    s = runner.state(runner.get("job1", "alice"))
    assert (s["status"], s["adapter"], s["metrics"]) == ("completed", str(done.path), {"train_loss": 0.5})
    assert runner.get("job1", "alice").name == "phi-3-mini-4k-instruct-qa-lora"
    s = wait(runner, runner.submit(cfg("complete"), "alice").id, "alice")  # and the new store works
    assert s["status"] == "completed"
