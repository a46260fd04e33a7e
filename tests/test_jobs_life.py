"""A Hugging Face job's life cycle as the service has it, against the Jobs stand-in (tests/jobs_server.py), with small
shell jobs instead of training: SCHEDULING first (logs 404 or empty meanwhile; its status message shown), log
streams that end before the job does, a cancel that takes seconds, a job gone only when inspect_job says 404, and
how a failure is told (stage, exit code, running time; the service's message as it is). Also what the stand-in
answers like the service: the 26 documented flavors, secrets by name."""

import time
import types
from pathlib import Path

import pytest
from helpers import CANARY

from phi3space.jobs import spec
from phi3space.jobs.hf import code, follow
from phi3space.jobs.hf.platform import JobRef
from phi3space.jobs.hf.protocol import CONFIG_VAR
from phi3space.run import RunDir

IMAGE = "hf.co/spaces/alice/phi3space"


def jobs_cfg(**compute):
    return spec.from_dict({"data": {"dataset": "alice/qa"}, "output": {"push_to": "alice/x"},
                             "compute": {"backend": "hf-jobs", **compute}})


def submit(script: str) -> JobRef:
    from huggingface_hub import HfApi

    info = HfApi().run_job(image=IMAGE, command=["sh", "-c", script], secrets={"HF_TOKEN": CANARY},
                           flavor="a10g-large", namespace="alice", token=CANARY)
    return JobRef("alice", info.id)


def wrapped(body: str) -> str:
    """``body`` as the trainer, under the wrapper every job's command has (code.job_command)."""
    return code.job_command(1)[2].replace("python -u -m phi3space train env:PHI3SPACE_RUN_CONFIG", f"( {body} )")


def test_the_stand_in_lists_the_documented_flavors_and_secrets_by_name(alice):
    from huggingface_hub import HfApi

    listed = {h.name: h for h in HfApi().list_jobs_hardware()}
    assert len(listed) == 26 and {"cpu-xl", "a10g-largex4", "a100x8", "h200x8", "rtx-pro-6000x8", "l40sx8"} <= set(listed)
    assert (listed["l40sx4"].accelerator.quantity, listed["l40sx4"].unit_cost_usd * 60) == ("4", pytest.approx(8.3, 0.01))
    ref = submit("exit 0")
    assert HfApi().inspect_job(job_id=ref.id, namespace="alice", token=CANARY).secrets == ["HF_TOKEN"]


@pytest.mark.parametrize("logs_meanwhile, cut", [("404", "end"), ("empty", "drop")])
def test_a_job_is_followed_through_scheduling_and_cut_streams_to_its_exit_code(alice, tmp_path, logs_meanwhile, cut):
    alice.jobs.scheduling_s, alice.jobs.scheduling_logs = 1.5, logs_meanwhile
    alice.jobs.scheduling_message = "Waiting for a free a10g-large"
    alice.jobs.stream_cut_s = 0.2  # every log stream ends (or drops) a moment after it began
    alice.jobs.stream_cut_drop = cut == "drop"
    alice.jobs.error_message = "Exited: {code}"  # whatever the service says is shown as it is
    ref = submit(wrapped("echo one; sleep 0.5; echo two; echo three; sleep 0.5; echo four; exit 3"))
    run = RunDir(tmp_path / "run")
    assert follow.follow_to_end(ref, CANARY, run, run.writer(), jobs_cfg(), retry_s=0.3) is True

    events, _ = run.read_events()
    said = [e["message"] for e in events if e["type"] == "log"]
    assert said == ["Hugging Face Jobs: scheduling (Waiting for a free a10g-large)"]  # once, while it waited
    state = run.state()
    assert state.status == "failed" and state.error["kind"] == "jobs", run.log.read_text()
    assert state.error["message"] == "the Hugging Face job failed with exit code 3 (Exited: 3)"  # not "was deleted"
    assert run.log.read_text().splitlines() == ["one", "two", "three", "four", "@phi3space-exit 3"]  # each once


@pytest.mark.slow
def test_an_oom_kill_and_a_time_limit_are_told_from_the_exit_code_and_the_running_time(alice, tmp_path):
    ref = submit(wrapped("python -c 'import time; print(\"up\", flush=True); time.sleep(60)'"))
    deadline = time.time() + 30
    while not any("up" == line for line in alice.jobs.job(ref.id)["lines"]) and time.time() < deadline:
        time.sleep(0.1)
    alice.jobs.kill(ref.id)  # the kernel's OOM killer takes the trainer; the service says nothing documented
    run = RunDir(tmp_path / "oom")
    follow.follow_to_end(ref, CANARY, run, run.writer(), jobs_cfg(), retry_s=0.3)
    error = run.state().error
    assert error["kind"] == "oom" and error["message"].startswith("the Hugging Face job was killed (exit code 137")
    assert "Pick a flavor with more memory" in error["hint"]

    alice.jobs.time_scale = 0.05  # a 1-minute limit ends the job after 3 s
    from huggingface_hub import HfApi

    info = HfApi().run_job(image=IMAGE, command=["sh", "-c", wrapped("sleep 60")], flavor="a10g-large",
                           timeout=60, namespace="alice", token=CANARY)
    run = RunDir(tmp_path / "timeout")
    follow.follow_to_end(JobRef("alice", info.id), CANARY, run, run.writer(), jobs_cfg(timeout="1m"), retry_s=0.3)
    error = run.state().error
    assert error["kind"] == "timeout" and error["message"] == \
        "the Hugging Face job reached its time limit (1m) and was stopped (Job timeout)"


def test_a_cancel_takes_seconds_and_ends_the_run_cancelled_and_only_a_404_from_inspect_means_gone(alice, tmp_path):
    alice.jobs.cancel_s = 1.0
    ref = submit(wrapped("trap 'echo stopping; exit 0' TERM; echo up; while :; do sleep 0.1; done"))
    deadline = time.time() + 30
    while not any("up" == line for line in alice.jobs.job(ref.id)["lines"]) and time.time() < deadline:
        time.sleep(0.1)
    follow.cancel(ref, CANARY)
    assert alice.jobs.job(ref.id)["status"]["stage"] == "RUNNING"  # the service takes its time
    run = RunDir(tmp_path / "run")
    follow.follow_to_end(ref, CANARY, run, run.writer(), jobs_cfg(), retry_s=0.3)
    assert run.state().status == "cancelled" and alice.jobs.job(ref.id)["status"]["stage"] == "CANCELED"

    alice.jobs.reset()  # the job is gone from the service: inspect_job answers 404
    run = RunDir(tmp_path / "gone")
    follow.follow_to_end(ref, CANARY, run, run.writer(), jobs_cfg(), retry_s=0.3)
    assert run.state().status == "failed" and run.state().error["message"].startswith("the Hugging Face job was deleted")


def test_a_volume_mounts_a_repo_folder_at_a_revision_and_one_that_cannot_be_mounted_refuses_the_job(alice):
    """Repo volumes as huggingface_hub sends them: the files of the repo at that revision, under ``path``, at the
    mount path (the stand-in rewrites the command's paths to the job's copy); returned by inspect_job as sent, read-only.
    A missing revision or repo, or one the token cannot read, refuses the job at run_job (the stand-in's choice:
    what the service does then is not documented)."""
    from huggingface_hub import HfApi, Volume
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=CANARY)
    alice.add_repo("alice/x", {"README.md": "main's"})
    api.create_branch("alice/x", branch="code")
    api.upload_file(path_or_fileobj=b"wheel bytes", path_in_repo="wheels/w.whl", repo_id="alice/x", revision="code")
    alice.add_repo("bob/private", {"wheels/w.whl": "bob's"}, private=True)

    def run(**volume):
        volume = Volume(**{"type": "model", "source": "alice/x", "mount_path": "/code", "path": "wheels", **volume})
        return api.run_job(image=IMAGE, command=["sh", "-c", "ls /code; cat /code/w.whl; echo; cat /code/README.md"],
                           volumes=[volume], flavor="cpu-basic", namespace="alice")

    info = run(revision="code")
    assert alice.jobs.wait(info.id, timeout=30) == "ERROR"  # README.md is not in the mounted subfolder
    lines = alice.jobs.job(info.id)["lines"]
    said, errors = [x for x in lines[1:] if "README" not in x], [x for x in lines if "README" in x]  # read apart
    assert said == ["w.whl", "wheel bytes"] and "No such file or directory" in errors[0], lines
    seen = api.inspect_job(job_id=info.id, namespace="alice").volumes
    assert seen == [Volume(type="model", source="alice/x", mount_path="/code", revision="code", path="wheels",
                           read_only=True)]
    before = alice.jobs.ids()
    for volume, status, said in [({"revision": "no-such-branch"}, 404, "Invalid rev id: no-such-branch"),
                                 ({"source": "alice/nothing"}, 404, "Repository not found"),
                                 ({"source": "bob/private"}, 404, "Repository not found"),
                                 ({"mount_path": "code"}, 400, "must be an absolute path")]:
        with pytest.raises(HfHubHTTPError) as refused:
            run(**volume)
        assert refused.value.response.status_code == status and said in str(refused.value), volume
    assert alice.jobs.ids() == before  # refused: no job started, nothing billed


# A stand-in for the trainer inside a job: its events echoed into its log as the real one's are, its adapter pushed
# to its destination repo with the run's config, as training.finish does (hub/push.upload_adapter), then its last word.
TRAINER = """
import os
from phi3space.hub.push import upload_adapter
from phi3space.jobs.hf.protocol import job_config, job_echo
from phi3space.run import RunDir

cfg = job_config("env:PHI3SPACE_RUN_CONFIG")
run = RunDir(cfg.output.dir)
run.path.mkdir(parents=True)
cfg.save(run.config)
writer = run.writer(echo=job_echo())
writer.emit("run_started", max_steps=3)
for step in (1, 2, 3):
    writer.emit("progress", step=step, max_steps=3, loss=2.0 / step)
run.adapter_weights.write_bytes(b"weights")
run.adapter_config.write_text("{}")
upload_adapter(run, cfg.output.push_to, os.environ["HF_TOKEN"], True, writer)
writer.finish("completed", step=3, adapter=str(run.path))
"""


class VirtualClock:
    """The follower's clock, moved on by its own waits (each also waited for real, ``scale`` times as long, so that
    the job goes on meanwhile): how often it asks is then counted in the seconds it means, however slow this
    machine is."""

    def __init__(self, scale):
        self.now, self.scale = 0.0, scale

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds
        time.sleep(seconds * self.scale)


def submit_trainer(hub, run_id="run-7") -> JobRef:
    from huggingface_hub import HfApi

    job_cfg = spec.from_dict({"data": {"dataset": "alice/qa"}, "output": {"push_to": "alice/x", "dir": run_id},
                                "compute": {"backend": "hf-jobs"}})
    info = HfApi().run_job(image=IMAGE, command=["sh", "-c", wrapped('python -c "$TRAINER"')],
                           env={CONFIG_VAR: job_cfg.to_yaml(), "TRAINER": TRAINER, "HF_ENDPOINT": hub.url},
                           secrets={"HF_TOKEN": CANARY}, flavor="a10g-large", namespace="alice", token=CANARY)
    return JobRef("alice", info.id)


@pytest.mark.parametrize("failing", ["for the whole job", "for its first minutes"])
def test_a_failing_log_service_is_asked_a_few_times_a_minute_and_a_completed_run_ends_completed(
        alice, tmp_path, monkeypatch, failing):
    """The log stream answers 503: the follower backs off (inspect_job and the log together at most 30 calls in any
    minute), and a run that completed and pushed its adapter ends completed: from its log once the log answers
    again, else from the adapter it pushed."""
    monkeypatch.setenv("PHI3SPACE_RETRY_BASE_S", "2")  # the follower's real pace
    clock = VirtualClock(scale=0.01)
    monkeypatch.setattr(follow, "time", types.SimpleNamespace(sleep=clock.sleep, monotonic=clock.monotonic,
                                                              time=time.time))
    alice.jobs.clock = clock.monotonic
    alice.jobs.scheduling_s = 0.2
    alice.jobs.fail_logs(503, None if failing == "for the whole job" else 90)
    ref = submit_trainer(alice)
    run = RunDir(tmp_path / "run")
    assert follow.follow_to_end(ref, CANARY, run, run.writer(), jobs_cfg()) is True

    assert alice.jobs.wait(ref.id, timeout=5) == "COMPLETED"
    calls = alice.jobs.calls(ref.id)
    assert any(status == 503 for _, route, status in calls if route == "logs"), calls
    busiest = max(sum(1 for u, _, _ in calls if t <= u < t + 60) for t, _, _ in calls)
    assert busiest <= 30, f"{busiest} calls in a minute: {calls}"
    state = run.state()
    assert (state.status, state.adapter_repo, state.error) == ("completed", "alice/x", None), run.read_events()[0]
    commit = alice.commits("alice/x")[-1]["oid"]
    events, _ = run.read_events()
    (push,) = [e for e in events if e["type"] == "push"]
    assert push["repo_id"] == "alice/x"
    if failing == "for the whole job":  # nothing of its log: its end is the adapter it pushed
        said = " ".join(e.get("message", "") for e in events if e["type"] == "log")
        assert "its log could not be read (HTTP 503)" in said and "the adapter it pushed to alice/x" in said
        assert push["commit"] == commit
    else:  # read from its log once it answered: every event, each once
        assert state.step == 3 and [e["step"] for e in events if e["type"] == "progress"] == [1, 2, 3]
        assert run.log.read_text().splitlines()[-1] == "@phi3space-exit 0"


def test_a_completed_job_whose_log_never_answers_and_that_pushed_nothing_is_not_called_completed(
        alice, tmp_path, monkeypatch):
    """Nothing of this run on its repo (an older adapter of another run is there): no proof that it completed."""
    from huggingface_hub import HfApi

    monkeypatch.setenv("PHI3SPACE_RETRY_BASE_S", "0.01")
    alice.add_repo("alice/x", {})
    HfApi(token=CANARY).upload_file(path_or_fileobj=b"run: {}\noutput: {dir: /tmp/phi3space/another-run}\n",
                                    path_in_repo="config.yaml", repo_id="alice/x", commit_message="phi3space: adapter")
    alice.jobs.fail_logs(503)
    alice.fail_next(5, 503, path_contains="/commits/")  # the Hub falters too: asked again later, not taken as "none"
    job_cfg = spec.from_dict({"data": {"dataset": "alice/qa"}, "output": {"push_to": "alice/x", "dir": "run-8"},
                                "compute": {"backend": "hf-jobs"}})
    info = HfApi().run_job(image=IMAGE, command=["sh", "-c", wrapped("echo trained")],
                           env={CONFIG_VAR: job_cfg.to_yaml()}, flavor="a10g-large", namespace="alice", token=CANARY)
    run = RunDir(tmp_path / "run")
    follow.follow_to_end(JobRef("alice", info.id), CANARY, run, run.writer(), jobs_cfg(), retry_s=0.1)
    state = run.state()
    assert state.status == "failed" and state.adapter_repo is None
    assert sum("/api/models/alice/x/commits/" in r.path for r in alice.requests) == 6
    message = state.error["message"]
    assert message.startswith("the Hugging Face job completed, but its log could not be read (HTTP 503)") and \
        message.endswith("and its repo holds no adapter from it"), message


def test_an_eval_or_export_job_stopped_at_its_time_limit_is_told_so_with_a_hint_of_its_own(alice, tmp_path):
    from huggingface_hub import HfApi

    alice.jobs.time_scale = 0.05  # a 1-minute limit ends the job after 3 s
    info = HfApi().run_job(image=IMAGE, command=["sh", "-c", wrapped("sleep 60")], flavor="a10g-large", timeout=60,
                           namespace="alice", token=CANARY)
    run = RunDir(tmp_path / "eval")
    follow.follow_to_end(JobRef("alice", info.id), CANARY, run, run.writer(), None, retry_s=0.3, trains=False,
                         timeout="1m")
    error = run.state().error
    assert error["kind"] == "timeout" and error["message"] == \
        "the Hugging Face job reached its time limit (1m) and was stopped (Job timeout)"
    assert "faster flavor" in error["hint"] and "checkpoint" not in error["hint"]


def test_a_log_outage_keeps_the_lines_already_mirrored(alice, tmp_path, monkeypatch):
    """Each stream replays from the first line: one that fails must not wipe the run's log (what the page shows)."""
    import threading

    monkeypatch.setenv("PHI3SPACE_RETRY_BASE_S", "0.05")
    alice.jobs.stream_cut_s = 0.3  # streams end while the job runs: the client asks again, and meets the outage
    ref = submit(wrapped("echo one; echo two; while [ ! -f go ]; do sleep 0.1; done; echo three"))
    run = RunDir(tmp_path / "run")
    follower = threading.Thread(target=follow.follow_to_end, args=(ref, CANARY, run, run.writer(), jobs_cfg()),
                                kwargs={"retry_s": 0.1}, daemon=True)
    follower.start()

    def wait_until(condition):
        deadline = time.time() + 60
        while not condition() and time.time() < deadline:
            time.sleep(0.05)
        assert condition()

    wait_until(lambda: run.log.exists() and run.log.read_text().splitlines() == ["one", "two"])
    alice.jobs.fail_logs(503, None, job_id=ref.id)
    wait_until(lambda: sum(status == 503 for _, _, status in alice.jobs.calls(ref.id)) >= 2)
    assert run.log.read_text().splitlines() == ["one", "two"]  # kept through the outage
    alice.jobs.heal_logs()
    (Path(alice.jobs.job(ref.id)["folder"]) / "go").touch()
    follower.join(60)
    assert not follower.is_alive()
    assert run.log.read_text().splitlines() == ["one", "two", "three", "@phi3space-exit 0"]
