"""Merge and push: `python -m phi3space merge RUN --push-to REPO` folds the adapter into its base and uploads the
merged model, stage by stage as events; the web page runs the same command as a job (JobRunner.submit with Merge) that
queues, runs and reports like training, with the visitor's token only in its environment."""

import json
import time

import gradio as gr
import pytest
from helpers import BOB
from helpers import CANARY as ALICE

from phi3space import cli
from phi3space.errors import AuthError, ConfigError
from phi3space.jobs.followups import Merge
from phi3space.jobs.scheduler import JobRunner
from phi3space.jobs.store import Job
from phi3space.run import RunDir
from phi3space.ui import jobs_view, services
from phi3space.ui.follow import Follower


@pytest.fixture
def alice(alice, monkeypatch):
    """alice and bob on the Hub (conftest's alice), and no waiting between retries."""
    monkeypatch.setenv("PHI3SPACE_RETRY_BASE_S", "0")
    return alice


def merged_files_ok(files: dict, base: str) -> None:
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(files)
    assert not any(name.startswith("adapter_") for name in files)  # a plain model: no peft needed
    card = files["README.md"].decode()
    assert f"base_model: {base}" in card and "AutoModelForCausalLM.from_pretrained" in card


def test_cli_merge_pushes_the_merged_model_and_reports_each_stage(trained_run, alice, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", ALICE)
    job_dir = tmp_path / "job"
    assert cli.main(["merge", str(trained_run), "--push-to", "alice/qa-merged", "--run-dir", str(job_dir)]) == 0
    events, _ = RunDir(job_dir).read_events()
    kinds = [e["type"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished" and "push" in kinds
    stages = [e for e in events if e["type"] == "progress"]
    assert [e["step"] for e in stages] == [1, 2, 3, 4, 5, 6] and all(e["max_steps"] == 6 for e in stages)
    assert "uploading" in stages[-1]["stage"] and "alice/qa-merged" in stages[-1]["stage"]
    state = RunDir(job_dir).state()
    assert state.status == "completed" and state.model_url.endswith("alice/qa-merged")
    assert state.adapter_url is None and state.checkpoint_url is None
    merged_files_ok(alice.files("alice/qa-merged"), RunDir(trained_run).adapter_base())
    assert alice.repo("alice/qa-merged")["private"] is True
    assert ALICE not in RunDir(job_dir).events.read_text()
    out = capsys.readouterr().out
    assert "[6/6] uploading" in out and "merge completed: " in out


def test_cli_merge_checks_push_access_before_loading_anything(trained_run, alice, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", ALICE)
    job_dir = tmp_path / "job"
    assert cli.main(["merge", str(trained_run), "--push-to", "bob/stolen", "--run-dir", str(job_dir)]) == 2
    assert "cannot push to bob/stolen" in capsys.readouterr().err
    state = RunDir(job_dir).state()
    assert state.status == "failed" and state.error["kind"] == "auth" and state.step == 1
    assert alice.repo("bob/stolen") is None
    assert cli.main(["merge", str(trained_run)]) == 2
    assert "--out DIR, --push-to REPO" in capsys.readouterr().err


@pytest.fixture
def runner(tmp_path):
    r = JobRunner(tmp_path / "data", slots=1, poll_s=0.1, space=True)
    yield r
    r.shutdown()


def finished_training_job(runner: JobRunner, trained_run, owner="alice") -> Job:
    job = Job(id="train1", owner=owner, name="qa-run", run_dir=str(trained_run), phase="done")
    runner.store.add(job)
    return job


def wait_until_final(runner, job_id, owner, timeout=240) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, _ = runner.status(runner.get(job_id, owner))
        if status in ("completed", "failed", "cancelled"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"{job_id} did not finish")


@pytest.mark.slow
def test_a_merge_job_runs_like_training_with_the_visitors_token_only_in_its_environment(trained_run, alice, runner):
    source = finished_training_job(runner, trained_run)
    job = runner.submit(Merge(source.id, "alice/qa-merged", private=False), "alice", ALICE)
    assert job.name == "qa-run-merged" and job.needs_token
    assert wait_until_final(runner, job.id, "alice") == "completed", job.run.log.read_text()[-2000:]
    status, state = runner.status(runner.get(job.id, "alice"))
    assert state.model_url.endswith("alice/qa-merged") and state.step == state.max_steps == 6
    merged_files_ok(alice.files("alice/qa-merged"), RunDir(trained_run).adapter_base())
    assert alice.repo("alice/qa-merged")["private"] is False
    assert alice.commits("alice/qa-merged")[-1]["token"] == ALICE  # pushed with the visitor's own token
    stored = runner.store.get(job.id)
    assert ALICE not in json.dumps(json.loads(stored.args)) and "--run-dir" in stored.args
    for path in (runner.store.path, job.run.events, job.run.log):
        assert ALICE.encode() not in path.read_bytes()
    with pytest.raises(ConfigError, match="only training runs can be resumed"):
        runner.resume(job.id, "alice", ALICE)


def test_a_merge_job_needs_a_finished_run_of_the_owner_and_on_a_space_a_sign_in(trained_run, alice, runner, tmp_path):
    source = finished_training_job(runner, trained_run)
    with pytest.raises(ConfigError, match="no job"):
        runner.submit(Merge(source.id, "bob/x"), "bob", BOB)
    with pytest.raises(AuthError, match="sign in"):
        runner.submit(Merge(source.id, "alice/x"), "alice", None)
    failed = RunDir(tmp_path / "failed-run")
    failed.append("run_started", max_steps=4)
    failed.append("run_finished", status="failed", step=1)
    runner.store.add(Job(id="failed1", owner="alice", name="f", run_dir=str(failed.path), phase="done"))
    with pytest.raises(ConfigError, match="no adapter to merge"):
        runner.submit(Merge("failed1", "alice/x"), "alice", ALICE)


def test_the_merge_button_checks_the_destination_before_queueing(trained_run, alice, tmp_path, monkeypatch):
    """Off a Space the page merges with the machine's login; without one, or to a repo outside that account, it
    refuses at once."""
    runner = JobRunner(tmp_path / "data", slots=1, space=False)
    services.set_runner(runner)
    try:
        source = finished_training_job(runner, trained_run, owner="local")
        follower = Follower()
        follower.follow(source)
        with pytest.raises(gr.Error, match="needs a Hugging Face token"):
            jobs_view.merge(follower, True, "alice/x", True, None, None)
        monkeypatch.setenv("HF_TOKEN", ALICE)
        for repo, message in (("not a repo", "is not a Hub repo ID"), ("bob/x", "cannot push to bob/x")):
            with pytest.raises(gr.Error, match=message):
                jobs_view.merge(follower, True, repo, True, None, None)
        assert [j.id for j in runner.list("local")] == [source.id]
    finally:
        runner.shutdown()
        services.set_runner(None)
