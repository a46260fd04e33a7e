"""Evaluate and export as jobs (JobRunner.submit with Evaluate / Export, what the page and /evaluate_job, /export_job
call): they need a finished run of the caller's, check what they are given before queueing, and run like training
with the visitor's token only in their environment."""

import json
import shutil

import pytest
from helpers import BOB, wait_job
from helpers import CANARY as ALICE

from phi3space.errors import AuthError, ConfigError
from phi3space.jobs.followups import Evaluate, Export
from phi3space.jobs.kinds import kind_of
from phi3space.jobs.scheduler import JobRunner
from phi3space.jobs.store import Job
from phi3space.run import RunDir


@pytest.fixture
def runner(tmp_path):
    r = JobRunner(tmp_path / "data", slots=1, poll_s=0.1, space=True)
    yield r
    r.shutdown()


def finished_run(runner, trained_run, tmp_path, owner="alice") -> Job:
    """``trained_run`` (a real adapter, or None: a stand-in run folder that ended with one) as a finished job."""
    run = tmp_path / "run"
    if trained_run is None:
        folder = RunDir(run)
        run.mkdir()
        folder.adapter_config.write_text('{"base_model_name_or_path": "base"}')
        folder.adapter_weights.write_bytes(b"w")
        folder.append("run_started", max_steps=4)
        folder.append("run_finished", status="completed", step=4, adapter=str(run))
    else:
        shutil.copytree(trained_run, run)
    job = Job(id="train1", owner=owner, name="qa-run", run_dir=str(run), phase="done")
    runner.store.add(job)
    return job


def test_followups_refuse_before_queueing(alice, runner, tmp_path):
    source = finished_run(runner, None, tmp_path)
    with pytest.raises(ConfigError, match="no job"):
        runner.submit(Evaluate(source.id), "bob", BOB)
    with pytest.raises(AuthError, match="sign in"):
        runner.submit(Evaluate(source.id), "alice", None)
    with pytest.raises(ConfigError, match="rows"):
        runner.submit(Evaluate(source.id, rows=0), "alice", ALICE)
    with pytest.raises(ConfigError, match="path on the server"):  # on a Space: Hub IDs or the visitor's uploads
        runner.submit(Evaluate(source.id, data="/etc/passwd"), "alice", ALICE)
    with pytest.raises(ConfigError, match="k-quants") as err:
        runner.submit(Export(source.id, "q4_k_m", None), "alice", ALICE)
    assert "is not one of f16, bf16, q8_0" in err.value.message
    with pytest.raises(AuthError, match="cannot push to bob/x"):
        runner.submit(Export(source.id, "q8_0", "bob/x"), "alice", ALICE)
    assert [j.id for j in runner.list("alice")] == [source.id]


@pytest.mark.slow
def test_an_eval_job_runs_like_training_and_reports_through_job_status(trained_run, alice, runner, tmp_path):
    source = finished_run(runner, trained_run, tmp_path)
    uploads = runner.data.uploads("alice")
    uploads.mkdir(parents=True, exist_ok=True)
    data = uploads / "qa.jsonl"
    shutil.copyfile(trained_run.parent / "qa.jsonl", data)
    job = runner.submit(Evaluate(source.id, data=str(data), rows=2), "alice", ALICE)
    assert job.kind == "eval" and job.name == "qa-run-eval"
    s = wait_job(runner, job.id, "alice", timeout=240)
    assert s["status"] == "completed", job.run.log.read_text()[-2000:]
    assert s["evaluation"]["rows"] == 2 and s["evaluation"]["adapter"]["exact_match"] == 1.0
    assert s["step"] == s["max_steps"] == 2
    stored = runner.store.get(job.id)
    assert ALICE not in json.dumps(json.loads(stored.args))
    assert kind_of(stored).argv(stored)[-2:] == ["--run-dir", stored.run_dir]  # the command line it ran
    for path in (runner.store.path, job.run.events, job.run.log):
        assert ALICE.encode() not in path.read_bytes()



@pytest.mark.slow  # (it launches the app)
def test_the_api_endpoints_go_through_the_same_checks(app, tmp_path):
    from helpers import client

    url, runner = app
    finished_run(runner, None, tmp_path, owner="local")
    c = client(url)
    with pytest.raises(Exception, match="no job 'nope' among your jobs"):
        c.predict("nope", api_name="/evaluate_job")
    with pytest.raises(Exception, match="rows: 0"):
        c.predict("train1", "", 0, api_name="/evaluate_job")
    with pytest.raises(Exception, match="k-quants"):
        c.predict("train1", "q4_k_m", api_name="/export_job")
    assert [j.id for j in runner.list("local")] == ["train1"]
