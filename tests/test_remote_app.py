"""The web app's API with compute.backend: hf-jobs, against the Jobs stand-in: submit, follow through /job_status,
the job pushes, /chat answers; Stop cancels the job and Resume continues on Jobs; a refusal at start is a readable
error and a failed run; after a restart (with the job store, or with the disk wiped) the visitor's running jobs are
found again with their token and followed; the token is only ever the job's secret."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import BOB, CANARY, FINAL, QA_PAIRS, assert_installed_the_mounted_wheel, client, memorise_config, running_app, status, wait_for

from phi3space.run import RunDir

gradio_client = pytest.importorskip("gradio_client")
# Besides alice, bob and alice/qa (the alice fixture): the tiny Phi-3 as acme/tiny-phi3 and the image jobs run.
pytestmark = pytest.mark.usefixtures("hub_model", "jobs_image")


def config_yaml(**overrides) -> str:
    settings = {"output__push_to": "alice/snarkle", "compute__backend": "hf-jobs", **overrides}
    return yaml.safe_dump(memorise_config("acme/tiny-phi3", "alice/qa", Path("ignored"), **settings))


@pytest.mark.slow
def test_submit_on_jobs_through_the_api_follow_push_and_chat(alice, tmp_path):
    data = tmp_path / "data"
    with running_app(data) as (url, runner):
        c = client(url, CANARY)
        job_id = c.predict(config_yaml(), api_name="/submit_job")
        job = runner.store.get(job_id)
        assert job.owner == "alice" and job.handle.startswith("alice/") and job.pid is None
        assert status(c, job_id)["status"] == "running" and status(c, job_id)["queue_position"] is None
        s = wait_for(c, job_id, lambda s: s["status"] in FINAL)
        assert s["status"] == "completed", s
        assert (s["step"], s["max_steps"], s["adapter"], s["error"]) == (40, 40, "alice/snarkle", None)
        assert s["repo_url"] == f"{alice.url}/alice/snarkle" and s["checkpoint_url"].endswith("/tree/checkpoints")
        assert runner.store.get(job_id).phase == "done"

        assert c.predict(job_id, QA_PAIRS[0][0], api_name="/chat") == QA_PAIRS[0][1]  # by job id: from the Hub
        assert c.predict("alice/snarkle", QA_PAIRS[3][0], api_name="/chat") == QA_PAIRS[3][1]
        with pytest.raises(gradio_client.exceptions.AppError, match="no job"):
            client(url, BOB).predict(job_id, api_name="/job_status")

        remote_id = job.handle.split("/")[1]
        spec = alice.jobs.job(remote_id)
        assert spec["labels"]["phi3space-run"] == job_id and spec["labels"]["phi3space"].startswith("app-")
        assert alice.jobs.secrets(remote_id) == {"HF_TOKEN": CANARY}
        # The canary appears nowhere but the job's secrets: not its spec, output, this app's files or answers.
        assert CANARY not in json.dumps({k: v for k, v in spec.items() if k != "folder"})
        assert CANARY not in json.dumps(s)
        assert not [p for p in data.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]
        assert not any(CANARY.encode() in content for content in alice.files("alice/snarkle").values())
        assert not any(CANARY.encode() in content for content in alice.files("alice/snarkle", "checkpoints").values())


def test_a_refusal_at_start_is_a_readable_error_and_a_failed_run(alice, tmp_path):
    alice.jobs.refuse("alice", 402)
    with running_app(tmp_path / "data") as (url, runner):
        with pytest.raises(gradio_client.exceptions.AppError, match=r"refused to start the job \(402: Payment") as info:
            client(url, CANARY).predict(config_yaml(), api_name="/submit_job")
        assert "settings/billing" in str(info.value)
        (job,) = runner.list("alice")
        s = runner.state(job)
        assert s["status"] == "failed" and "402" in s["error"]["message"] and "payment method" in s["error"]["hint"]
        with pytest.raises(gradio_client.exceptions.AppError, match="needs output.push_to"):
            client(url, CANARY).predict(config_yaml(output__push_to=None), api_name="/submit_job")
        assert alice.jobs.ids() == []


@pytest.mark.slow
def test_stop_cancels_the_job_and_resume_continues_on_jobs(alice, tmp_path):
    long = config_yaml(training__max_steps=100000, training__logging_steps=1, training__save_steps=3)
    with running_app(tmp_path / "data") as (url, runner):
        c = client(url, CANARY)
        job_id = c.predict(long, api_name="/submit_job")
        wait_for(c, job_id, lambda s: (s["checkpoint_url"] or "") and s["step"] >= 4)
        first = runner.store.get(job_id).handle.split("/")[1]
        c.predict(job_id, api_name="/cancel_job")
        s = wait_for(c, job_id, lambda s: s["status"] in FINAL, timeout=60)
        assert s["status"] == "cancelled" and alice.jobs.job(first)["status"]["stage"] == "CANCELED"

        assert json.loads(c.predict(job_id, api_name="/resume_job"))["status"] == "running"
        second = runner.store.get(job_id).handle.split("/")[1]
        assert second != first and "--resume &" in alice.jobs.job(second)["command"][2]
        run = RunDir(runner.store.get(job_id).run_dir)
        started = lambda: [e for e in run.read_events()[0] if e["type"] == "run_started"]  # noqa: E731
        wait_for(c, job_id, lambda s: s["status"] == "running" and len(started()) == 2)
        assert started()[-1]["resumed_from"].split("/")[-1] == f"checkpoint-{s['step']}"  # where Stop saved it
        c.predict(job_id, api_name="/cancel_job")
        assert wait_for(c, job_id, lambda s: s["status"] in FINAL, timeout=60)["status"] == "cancelled"


@pytest.mark.slow
def test_after_a_restart_running_jobs_are_found_again_when_their_owner_is_next_seen(alice, tmp_path):
    data = tmp_path / "data"
    with running_app(data) as (url, runner):
        c = client(url, CANARY)
        kept = c.predict(config_yaml(training__max_steps=60, training__logging_steps=1), api_name="/submit_job")
        lost = c.predict(config_yaml(training__max_steps=100000, training__logging_steps=1, output__push_to="alice/other"),
                         api_name="/submit_job")
        wait_for(c, kept, lambda s: s["step"] >= 2)
        wait_for(c, lost, lambda s: s["step"] >= 2)
    # The app is gone; its jobs run on. One app comes back on the same data folder ...
    with running_app(data) as (url, runner):
        job = runner.store.get(kept)
        assert job.phase == "running" and kept not in runner.backends["hf-jobs"]._following  # no token yet: nobody follows it
        before = len(alice.requests)
        s = wait_for(client(url, CANARY), kept, lambda s: s["status"] in FINAL)  # alice is back: her token is at hand
        assert s["status"] == "completed" and s["adapter"] == "alice/snarkle", s
        listed = [r for r in alice.requests[before:] if r.method == "GET" and r.path.startswith("/api/jobs/alice?")]
        assert listed and all(r.token == CANARY for r in listed) and "label=phi3space" in listed[0].path
        events, _ = RunDir(job.run_dir).read_events()
        steps = [e["step"] for e in events if e["type"] == "progress"]
        assert steps == list(range(1, 61)) and [e["type"] for e in events].count("run_started") == 1  # once each
    # ... and one on a wiped disk (as a Space restarts): the running job is listed again from the platform.
    shutil.rmtree(data)
    with running_app(data, space=True) as (url, runner):
        c = client(url, CANARY)
        # her first call, whatever it is, answers with the job the platform still runs (found again before it answers)
        assert [j["id"] for j in json.loads(c.predict(api_name="/list_jobs"))] == [lost]
        s = wait_for(c, lost, lambda s: s["status"] == "running" and s["step"] >= 1)
        assert runner.store.get(lost).owner == "alice"
        c.predict(lost, api_name="/cancel_job")
        assert wait_for(c, lost, lambda s: s["status"] in FINAL, timeout=60)["status"] == "cancelled"


@pytest.mark.slow
def test_off_a_space_with_no_image_the_app_sends_a_wheel_of_this_code_and_shows_the_scheduling(alice, tmp_path,
                                                                                               monkeypatch):
    from phi3space.jobs.hf import code

    monkeypatch.delenv("PHI3SPACE_JOBS_IMAGE")
    alice.jobs.scheduling_s, alice.jobs.scheduling_message = 2.0, "Waiting for a free a10g-large"
    with running_app(tmp_path / "data") as (url, runner):
        c = client(url, CANARY)
        job_id = c.predict(config_yaml(training__max_steps=4), api_name="/submit_job")
        s = wait_for(c, job_id, lambda s: s["status"] in FINAL)
        assert s["status"] == "completed" and s["adapter"] == "alice/snarkle", s
        spec = alice.jobs.job(runner.store.get(job_id).handle.split("/")[1])
        assert spec["dockerImage"] == code.PUBLIC_IMAGE
        assert_installed_the_mounted_wheel(spec, "alice/snarkle")  # from the volume, no token for it; then ran it
        events, _ = RunDir(runner.store.get(job_id).run_dir).read_events()
        assert "Hugging Face Jobs: scheduling (Waiting for a free a10g-large)" in [e.get("message") for e in events]
        assert CANARY not in json.dumps({k: v for k, v in spec.items() if k != "folder"})
