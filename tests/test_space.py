"""The app on a simulated Space (SYSTEM=spaces, SPACE_ID, SPACE_HOST, OAUTH_* and an OpenID discovery document on
127.0.0.1, the Hub stand-in): sign-in renders; a visitor trains and pushes checkpoints; the app and its training
process are killed and the local disk is wiped; a new app process brings the visitor's run back from the Hub, the
job id still answers, and /resume_job finishes it from the last pushed checkpoint; the owner's HF_TOKEN is never
used. Then: a run whose push failed is delivered by /push_again with the visitor's current token."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest
import yaml
from helpers import BOB, FINAL, QA_PAIRS, ROOT, free_port, memorise_config, running_app, start_app, status, wait_for, write_qa_jsonl
from helpers import CANARY as ALICE

from phi3space.jobs.store import JobStore
from phi3space.run import RunDir

gradio_client = pytest.importorskip("gradio_client")
# the scopes the Space's front matter asks for (README.md): the simulation grants the same
SCOPES = yaml.safe_load((ROOT / "README.md").read_text().split("---")[1])["hf_oauth_scopes"]
pytestmark = pytest.mark.slow
OWNER = "tok-space-owner-0123456789"


def space_env(hub) -> dict:
    env = {**os.environ, "SYSTEM": "spaces", "SPACE_ID": "owner/phi3space", "SPACE_HOST": "owner-phi3space.hf.space",
           "OAUTH_CLIENT_ID": "client-0123", "OAUTH_CLIENT_SECRET": "client-secret-0123",
           "OAUTH_SCOPES": " ".join(["openid", "profile", *SCOPES]), "OPENID_PROVIDER_URL": hub.url,
           "HF_TOKEN": OWNER, "PHI3SPACE_RETRY_BASE_S": "0.05", "PYTHONUNBUFFERED": "1"}
    env.pop("PHI3SPACE_SLOTS", None)
    return env


@pytest.mark.usefixtures("alice", "hub_model")  # alice, bob, alice/qa; acme/tiny-phi3
def test_a_visitors_run_survives_a_space_restart_through_the_hub(hub, tmp_path):
    hub.add_user("owner", OWNER)
    hub.add_repo("owner/phi3space", repo_type="space", owner_token=OWNER)
    data_dir, port, env = tmp_path / "space-disk", free_port(), space_env(hub)
    cfg = memorise_config("acme/tiny-phi3", "alice/qa", tmp_path / "ignored", training__max_steps=40,
                          training__save_steps=3, training__logging_steps=1, output__push_to="alice/snarkle")

    app = start_app(data_dir, port, space=True, env=env)
    trainer_pid = None
    try:
        url = f"http://127.0.0.1:{port}"
        # Sign-in renders: the page has the button, and /login/huggingface sends the browser to the provider named
        # by the discovery document, with this Space's client id and scopes.
        page = httpx.get(f"{url}/config").json()
        assert any(c["props"].get("value") == "Sign in with Hugging Face" for c in page["components"])
        login = httpx.get(f"{url}/login/huggingface", follow_redirects=False)
        assert login.status_code in (302, 307)
        where = login.headers["location"]
        assert where.startswith(f"{hub.url}/oauth/authorize?") and "client_id=client-0123" in where
        assert "contribute-repos" in where and "read-repos" in where
        assert any(r.path == "/.well-known/openid-configuration" for r in hub.requests)

        alice = gradio_client.Client(url, oauth_token=ALICE, verbose=False)
        job_id = alice.predict(yaml.safe_dump(cfg), api_name="/submit_job")
        job = JobStore(data_dir / "jobs.sqlite").get(job_id)
        run = RunDir(job.run_dir)
        deadline = time.time() + 180
        while time.time() < deadline and not any(e.get("what") == "checkpoint-6" for e in run.read_events()[0]):
            time.sleep(0.05)
        trainer_pid = JobStore(data_dir / "jobs.sqlite").get(job_id).pid
        assert trainer_pid and status(alice, job_id)["status"] == "running"
    finally:
        app.send_signal(signal.SIGKILL)  # the Space restarts: its processes die ...
        app.wait()
        if trainer_pid:
            os.killpg(trainer_pid, signal.SIGKILL)
    time.sleep(0.5)
    shutil.rmtree(data_dir)  # ... and its disk is wiped
    pushed = sorted({int(f.split("/")[0].split("-")[1]) for f in hub.files("alice/snarkle", revision="checkpoints")
                     if f.startswith("checkpoint-")})
    newest = pushed[-1]
    assert len(pushed) >= 2 and newest >= 6 and "events.jsonl" in hub.files("alice/snarkle", revision="checkpoints")

    app = start_app(data_dir, port, space=True, env=env)
    try:
        bob = gradio_client.Client(url, oauth_token=BOB, verbose=False)
        with pytest.raises(gradio_client.exceptions.AppError, match="no job"):
            bob.predict(job_id, api_name="/job_status")
        alice = gradio_client.Client(url, oauth_token=ALICE, verbose=False)
        listed = json.loads(alice.predict(api_name="/list_jobs"))  # read back from alice's repos on the Hub
        assert [j["id"] for j in listed] == [job_id]
        s = status(alice, job_id)  # the id alice holds answers again
        assert s["status"] == "failed" and s["error"]["kind"] == "interrupted" and s["step"] >= newest - 1
        assert "Resume it" in s["error"]["hint"]

        assert json.loads(alice.predict(job_id, api_name="/resume_job"))["status"] in ("queued", "running")
        s = wait_for(alice, job_id, lambda s: s["status"] in FINAL)
        assert (s["status"], s["step"], s["error"]) == ("completed", 40, None), s
        assert s["adapter"] == "alice/snarkle"
        events = RunDir(JobStore(data_dir / "jobs.sqlite").get(job_id).run_dir).read_events()[0]
        started = [e for e in events if e["type"] == "run_started"][-1]
        assert started["resumed_from"].endswith(f"checkpoint-{newest}")
        after = [e["step"] for e in events if e["type"] == "progress" and e["time"] > started["time"]]
        assert after[0] == newest + 1 and after[-1] == 40

        card = hub.files("alice/snarkle")["README.md"].decode()
        record = yaml.safe_load(card.split("---")[1])["phi3space"]
        assert (record["job"], record["status"], record["space"]) == (job_id, "completed", "owner/phi3space")
        question, answer = QA_PAIRS[1]
        assert alice.predict(job_id, question, api_name="/chat") == answer
    finally:
        app.send_signal(signal.SIGTERM)
        app.wait(30)

    shutil.rmtree(data_dir)  # another restart: the finished run comes back from its card, and chat uses the Hub adapter
    app = start_app(data_dir, port, space=True, env=env)
    try:
        alice = gradio_client.Client(url, oauth_token=ALICE, verbose=False)
        [s] = json.loads(alice.predict(api_name="/list_jobs"))
        assert (s["id"], s["status"], s["step"], s["adapter"]) == (job_id, "completed", 40, "alice/snarkle")
        question, answer = QA_PAIRS[2]
        assert alice.predict(job_id, question, api_name="/chat") == answer
    finally:
        app.send_signal(signal.SIGTERM)
        app.wait(30)

    # Every push was alice's; the owner's HF_TOKEN never reached the Hub (nor a visitor's job).
    assert {c["token"] for c in hub.commits("alice/snarkle")} == {ALICE}
    assert [r for r in hub.requests if r.token == OWNER] == []


@pytest.mark.usefixtures("alice")
def test_push_again_delivers_a_stranded_adapter_with_the_current_token(hub, tiny_model, tmp_path, monkeypatch):
    hub.add_user("alice", "tok-alice-signed-in-again-0123")  # the same visitor, signed in again later
    monkeypatch.setenv("PHI3SPACE_RETRY_BASE_S", "0.02")
    qa = write_qa_jsonl(tmp_path / "qa.jsonl")
    cfg = memorise_config(tiny_model, str(qa), tmp_path / "ignored", training__max_steps=60,
                          training__logging_steps=1, output__push_to="alice/stranded")
    with running_app(tmp_path / "data") as (url, runner):
        alice = gradio_client.Client(url, oauth_token=ALICE, verbose=False)
        job_id = alice.predict(yaml.safe_dump(cfg), api_name="/submit_job")
        wait_for(alice, job_id, lambda s: s["status"] == "running" and s["step"] >= 1)
        hub.down = True  # the Hub goes away before the final push
        try:
            s = wait_for(alice, job_id, lambda s: s["status"] in FINAL)
        finally:
            hub.down = False
        assert s["status"] == "failed" and s["push_pending"] and s["error"]["kind"] == "hub", s
        assert "adapter_model.safetensors" not in hub.files("alice/stranded")

        again = gradio_client.Client(url, oauth_token="tok-alice-signed-in-again-0123", verbose=False)
        s = json.loads(again.predict(job_id, api_name="/push_again"))
        assert (s["status"], s["adapter"], s["push_pending"], s["error"]) == ("completed", "alice/stranded", False, None)
        pushed = [c for c in hub.commits("alice/stranded") if "adapter_model.safetensors" in c["files"]]
        assert [c["token"] for c in pushed] == ["tok-alice-signed-in-again-0123"]  # the current sign-in, no retraining
        assert runner.store.get(job_id).exit_code != 0  # the training process itself ended failed: nothing re-ran
        with pytest.raises(gradio_client.exceptions.AppError, match="no adapter waiting"):
            again.predict(job_id, api_name="/push_again")


def test_the_app_starts_on_a_space_without_a_traceback(hub, tmp_path):
    """gradio's reloader thread on a Space imports `spaces` (a requirement now): without it, it dies at start with a
    traceback in the log."""
    env = {**space_env(hub), "PHI3SPACE_DATA_DIR": str(tmp_path), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(free_port())}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not any("http://" in line for line in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        time.sleep(3)  # the reloader's thread starts after the server
    finally:
        proc.kill()
        lines += proc.stdout.readlines()
        proc.wait()
    log = "".join(lines)
    assert "http://" in log, log
    # (only this failure: parallel tests' Space apps may also contend for the reloader's fixed port, 7887)
    assert "`spaces` package is required" not in log and "RuntimeError" not in log, log
