"""The app process dies while a job trains; the job finishes on its own; a new app process finds the run
completed (from the run's own events) and chats with its adapter."""

import signal
import time

import pytest
import yaml
from helpers import QA_PAIRS, free_port, memorise_config, start_app, status, write_qa_jsonl

from phi3space.jobs.store import JobStore
from phi3space.run import RunDir

gradio_client = pytest.importorskip("gradio_client")
pytestmark = pytest.mark.slow


def test_a_job_that_finishes_while_the_app_is_down_is_completed_after_restart(tiny_model, tmp_path):
    data_dir, port = tmp_path / "data", free_port()
    qa = write_qa_jsonl(tmp_path / "qa.jsonl")
    cfg = memorise_config(tiny_model, str(qa), tmp_path / "ignored", training__logging_steps=1)
    app = start_app(data_dir, port)
    try:
        c = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        job_id = c.predict(yaml.safe_dump(cfg), api_name="/submit_job")
        deadline = time.time() + 120
        while time.time() < deadline and status(c, job_id)["step"] < 2:
            time.sleep(0.3)
        assert status(c, job_id)["status"] == "running"
    finally:
        app.send_signal(signal.SIGKILL)  # no clean shutdown: the trainer runs on, unwatched
        app.wait()

    job = JobStore(data_dir / "jobs.sqlite").get(job_id)
    assert job.phase == "running"  # what the dead server last knew
    deadline = time.time() + 180
    while time.time() < deadline and not RunDir(job.run_dir).state().final:
        time.sleep(0.5)
    assert RunDir(job.run_dir).state().status == "completed"

    app = start_app(data_dir, port)
    try:
        c = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        s = status(c, job_id)
        assert (s["status"], s["step"], s["error"]) == ("completed", 40, None)
        assert s["adapter"] == job.run_dir and s["metrics"]["steps"] == 40
        question, answer = QA_PAIRS[2]
        assert c.predict(job_id, question, api_name="/chat") == answer
    finally:
        app.send_signal(signal.SIGTERM)
        app.wait(30)
