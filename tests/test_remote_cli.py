"""`python -m phi3space train` with compute.backend: hf-jobs, against the Jobs stand-in (tests/jobs_server.py): the
job runs the same engine as a local subprocess standing in for the image; the CLI submits it, prints the usual
progress lines from its mirrored events and exits like a local run. Faults: refused at start, out of memory, time
limit, Ctrl-C; two processes under accelerate inside one job."""

import functools
import json
import signal
import time
from pathlib import Path

import helpers
import pytest
import yaml
from helpers import CANARY, QA_PAIRS, assert_installed_the_mounted_wheel, memorise_config, qa_jsonl, start_cli

from phi3space.run import RunDir

# Besides alice, her private dataset alice/qa (the alice fixture): the tiny Phi-3 as acme/tiny-phi3 on the Hub (a job
# reads everything from there), and the image the job runs.
pytestmark = pytest.mark.usefixtures("hub_model", "jobs_image")


def jobs_config(tmp_path, run_dir, **overrides) -> Path:
    settings = {"output__push_to": "alice/snarkle", "compute__backend": "hf-jobs", "compute__flavor": "a10g-large",
                **overrides}
    cfg = memorise_config("acme/tiny-phi3", "alice/qa", run_dir, **settings)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


run_cli = functools.partial(helpers.run_cli, token=CANARY)  # alice at her terminal


def only_job(hub) -> str:
    (job_id,) = hub.jobs.ids()
    return job_id


@pytest.mark.slow
def test_train_on_jobs_from_the_cli_pushes_from_the_job_and_chats(alice, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("train", str(jobs_config(tmp_path, run_dir)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    job = alice.jobs.job(only_job(alice))
    assert job["status"]["stage"] == "COMPLETED" and job["spaceId"] == "alice/phi3space"
    assert job["command"][:2] == ["sh", "-c"] and "python -u -m phi3space train env:PHI3SPACE_RUN_CONFIG &" in job["command"][2]
    assert job["flavor"] == "a10g-large" and job["timeoutSeconds"] == 4 * 3600
    assert job["labels"]["phi3space"] == "cli" and alice.jobs.secrets(job["id"]) == {"HF_TOKEN": CANARY}
    sent = yaml.safe_load(job["environment"]["PHI3SPACE_RUN_CONFIG"])
    assert sent["output"]["push_to"] == "alice/snarkle" and sent["output"]["push_checkpoints"] is True

    # The usual progress lines, from the job's events mirrored into the local run folder.
    out = result.stdout
    assert "submitted to Hugging Face Jobs" in out and "run started" in out and "step 40/40" in out
    assert f"pushed adapter to {alice.url}/alice/snarkle" in out and "run completed at step 40" in out
    state = RunDir(run_dir).state()
    assert (state.status, state.step, state.adapter_repo) == ("completed", 40, "alice/snarkle")
    events, _ = RunDir(run_dir).read_events()
    assert [e["type"] for e in events].count("run_started") == 1
    assert events[-1]["adapter"] == "alice/snarkle"  # not the job's own (gone) folder
    assert "step 40/40" in RunDir(run_dir).log.read_text()  # the job's output, for the log view

    # The job pushed the adapter and its checkpoints, with the token it was given as a secret.
    assert {c["branch"] for c in alice.commits("alice/snarkle")} == {"main", "checkpoints"}
    assert all(c["token"] == CANARY for c in alice.commits("alice/snarkle"))
    assert "checkpoint-40/adapter_model.safetensors" in alice.files("alice/snarkle", "checkpoints")

    question, answer = QA_PAIRS[2]
    chat = run_cli("chat", "--adapter", "alice/snarkle", "--prompt", question)
    assert chat.returncode == 0, chat.stderr[-3000:]
    assert chat.stdout.strip() == answer

    # The token went in as the job's secret and nowhere else.
    assert CANARY not in json.dumps({k: v for k, v in job.items() if k != "folder"})
    assert CANARY not in result.stdout + result.stderr
    assert not [p for p in run_dir.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]
    assert not any(CANARY.encode() in data for data in alice.files("alice/snarkle").values())


@pytest.mark.slow
def test_a_run_whose_log_never_answers_ends_completed_from_the_adapter_it_pushed(alice, tmp_path):
    """The log service answers 503 for the whole job: the CLI says so, and ends like the run did (completed, its
    adapter on the Hub), from the commit the job pushed."""
    alice.jobs.fail_logs(503)
    run_dir = tmp_path / "run"
    result = run_cli("train", str(jobs_config(tmp_path, run_dir)), PHI3SPACE_RETRY_BASE_S="0.2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job_id = only_job(alice)
    assert alice.jobs.job(job_id)["status"]["stage"] == "COMPLETED"
    assert {status for _, route, status in alice.jobs.calls(job_id) if route == "logs"} == {503}
    assert "its log could not be read (HTTP 503): its end is read from the adapter it pushed to alice/snarkle" in \
        result.stdout
    state = RunDir(run_dir).state()
    assert (state.status, state.adapter_repo, state.error) == ("completed", "alice/snarkle", None)
    (adapter_commit,) = [c for c in alice.commits("alice/snarkle") if c["message"] == "phi3space: adapter"]
    assert [e["commit"] for e in RunDir(run_dir).read_events()[0] if e["type"] == "push"] == [adapter_commit["oid"]]


def test_a_job_refused_at_start_exits_2_with_the_platforms_reason(alice, tmp_path):
    alice.jobs.refuse("alice", 402)
    run_dir = tmp_path / "run"
    result = run_cli("train", str(jobs_config(tmp_path, run_dir)))
    assert result.returncode == 2, result.stderr
    err = result.stderr
    assert "error: Hugging Face Jobs refused to start the job (402: Payment required" in err
    assert "hint: Jobs are billed to the account that runs them" in err and "settings/billing" in err
    assert "Traceback" not in err and alice.jobs.ids() == []
    state = RunDir(run_dir).state()
    assert state.status == "failed" and "402" in state.error["message"]


def test_settings_problems_are_refused_before_a_job_starts(alice, tmp_path):
    cases = [
        ({"compute__flavor": "a10g-huge"}, {}, "compute.flavor: 'a10g-huge' is not a Hugging Face Jobs hardware flavor"),
        ({"output__push_to": None}, {}, "compute.backend: hf-jobs needs output.push_to"),
        ({"compute__timeout": "soon"}, {}, "compute.timeout: 'soon' is not a duration"),
    ]
    for i, (overrides, env, expected) in enumerate(cases):
        result = run_cli("train", str(jobs_config(tmp_path, tmp_path / f"run{i}", **overrides)), **env)
        assert result.returncode == 2 and expected in result.stderr, result.stderr
    cfg = memorise_config("acme/tiny-phi3", str(tmp_path / "qa.jsonl"), tmp_path / "run9", compute__backend="hf-jobs",
                          output__push_to="alice/x")
    (tmp_path / "qa.jsonl").write_text(qa_jsonl())
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(cfg))
    result = run_cli("train", str(tmp_path / "local.yaml"))
    assert result.returncode == 2 and "a Hugging Face job cannot read it" in result.stderr and "hf upload" in result.stderr
    assert run_cli("train", str(tmp_path / "local.yaml"), token=None).returncode == 2
    assert alice.jobs.ids() == []


def _submitted(hub, timeout=60) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline and not hub.jobs.ids():
        time.sleep(0.1)
    return only_job(hub)


def _until_line(hub, job_id, text, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(text in line for line in hub.jobs.job(job_id)["lines"]):
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in the job's output")


@pytest.mark.parametrize("fault", ["oom", "timeout"])
@pytest.mark.slow
def test_a_job_killed_for_memory_or_time_fails_with_the_reason_and_a_hint(alice, tmp_path, fault):
    run_dir = tmp_path / "run"
    long = dict(training__max_steps=100000, training__logging_steps=1, training__save_steps=3)
    if fault == "timeout":
        alice.jobs.time_scale = 0.2  # a 1-minute limit ends the job after 12 s
        long["compute__timeout"] = "1m"
    proc = start_cli("train", str(jobs_config(tmp_path, run_dir, **long)), token=CANARY)
    job_id = _submitted(alice)
    if fault == "oom":
        _until_line(alice, job_id, "pushed checkpoint-3")
        alice.jobs.kill(job_id)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, out[-2000:] + err[-2000:]
    state = RunDir(run_dir).state()
    assert state.status == "failed" and state.error["kind"] == fault
    if fault == "oom":
        assert "error: the Hugging Face job was killed (exit code 137, SIGKILL: most often for running out of memory)" in err
        assert "hint: Pick a flavor with more memory" in err and "Resume continues from the last checkpoint" in err
    else:
        assert "error: the Hugging Face job reached its time limit (1m) and was stopped (Job timeout)" in err
        assert "hint: Raise compute.timeout." in err
    if fault == "oom":  # the checkpoint it pushed continues the run here, on this machine
        again = run_cli("train", str(run_dir / "config.yaml"), "--resume", "--set", "compute.backend=local",
                        "--set", "training.max_steps=40")
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        assert "downloaded from alice/snarkle (branch checkpoints)" in again.stdout
        assert RunDir(run_dir).state().status == "completed" and RunDir(run_dir).has_adapter()


@pytest.mark.slow
def test_ctrl_c_cancels_the_job_then_resume_continues_on_jobs_from_the_pushed_checkpoint(alice, tmp_path):
    run_dir = tmp_path / "run"
    cfg = jobs_config(tmp_path, run_dir, training__max_steps=100000, training__logging_steps=1, training__save_steps=3)
    proc = start_cli("train", str(cfg), token=CANARY)
    job_id = _submitted(alice)
    _until_line(alice, job_id, "pushed checkpoint-3")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert f"stopping: cancelling job alice/{job_id}" in out and "stopped at step" in err
    assert alice.jobs.job(job_id)["status"]["stage"] == "CANCELED"
    assert RunDir(run_dir).state().status == "cancelled"

    result = run_cli("train", str(cfg), "--resume", "--set", "training.max_steps=8")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    second = [j for j in alice.jobs.ids() if j != job_id][0]
    assert "env:PHI3SPACE_RUN_CONFIG --resume &" in alice.jobs.job(second)["command"][2]
    assert "resuming from checkpoint-" in result.stdout and "run completed at step 8" in result.stdout
    assert RunDir(run_dir).state().status == "completed"


@pytest.mark.slow
def test_two_processes_under_accelerate_in_one_job_write_one_run_and_one_event_stream(alice, tmp_path):
    run_dir = tmp_path / "run"
    cfg = jobs_config(tmp_path, run_dir, compute__flavor="a10g-largex2", training__max_steps=4,
                      training__batch_size=2, training__logging_steps=1, training__save_steps=2)
    alice.jobs.image_env = {"ACCELERATE_USE_CPU": "true"}  # the stand-in's "GPUs" are CPU processes (gloo)
    result = run_cli("train", str(cfg), timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job = alice.jobs.job(only_job(alice))
    assert job["command"][2].startswith("accelerate launch --multi_gpu --num_processes 2 --num_machines 1 -m phi3space "
                                        "train env:PHI3SPACE_RUN_CONFIG &")

    events, _ = RunDir(run_dir).read_events()
    assert [e["type"] for e in events].count("run_started") == 1 and events[-1]["status"] == "completed"
    progress = [e for e in events if e["type"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3, 4]  # written once, by the main process
    assert progress[1]["epoch"] == 2.0  # 4 rows, 2 per process per step, 2 processes
    assert result.stdout.count("step 4/4") == 1
    inside = list(Path(job["folder"]).rglob("events.jsonl"))  # the job's own run folder: one, written once
    assert len(inside) == 1 and sum('"run_started"' in line for line in inside[0].read_text().splitlines()) == 1


@pytest.mark.slow
def test_the_cli_run_again_on_the_same_folder_follows_its_running_job_instead_of_starting_another(alice, tmp_path):
    run_dir = tmp_path / "run"
    cfg = jobs_config(tmp_path, run_dir, training__max_steps=60, training__logging_steps=1)
    proc = start_cli("train", str(cfg), token=CANARY, output=False)
    job_id = _submitted(alice)
    _until_line(alice, job_id, "step 3/60")
    proc.kill()  # the terminal closed; the job runs on
    proc.wait()
    result = run_cli("train", str(cfg))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"following job alice/{job_id} again" in result.stdout and alice.jobs.ids() == [job_id]
    events, _ = RunDir(run_dir).read_events()
    assert [e["step"] for e in events if e["type"] == "progress"] == list(range(1, 61))  # each once
    assert RunDir(run_dir).state().status == "completed"
    again = run_cli("train", str(cfg))
    assert again.returncode == 2 and "already holds a run" in again.stderr


@pytest.mark.slow
def test_with_only_a_token_a_run_goes_to_jobs_as_a_wheel_of_this_code_on_a_public_pytorch_image(alice, tmp_path,
                                                                                                monkeypatch):
    from phi3space.jobs.hf import code

    monkeypatch.delenv("PHI3SPACE_JOBS_IMAGE")  # no Space, no image of her own: a token is all she has
    alice.jobs.scheduling_s, alice.jobs.scheduling_message = 2.0, "Waiting for a free a10g-large"
    alice.jobs.stream_cut_s = 3.0  # the log stream drops every few seconds; the run is followed to its end
    cfg = jobs_config(tmp_path, tmp_path / "run", training__max_steps=4, training__logging_steps=1)
    result = run_cli("train", str(cfg))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job = alice.jobs.job(only_job(alice))
    assert job["dockerImage"] == code.PUBLIC_IMAGE and "spaceId" not in job
    (wheel,) = [name for name in alice.files("alice/snarkle", "phi3space-code") if name.endswith(".whl")]
    assert wheel == f"wheels/{code.build_wheel()[0]}"  # this code, named by its content
    assert_installed_the_mounted_wheel(job, "alice/snarkle")  # from the volume, no token for it; then ran it
    out = result.stdout
    assert "Hugging Face Jobs: scheduling (Waiting for a free a10g-large)" in out
    assert "uploaded this code" in out and "run completed at step 4" in out
    events, _ = RunDir(tmp_path / "run").read_events()
    assert [e["step"] for e in events if e["type"] == "progress"] == [1, 2, 3, 4]  # each once, across dropped streams
    assert CANARY not in json.dumps({k: v for k, v in job.items() if k != "folder"}) and CANARY not in out + result.stderr

    again = run_cli("train", str(cfg), "--set", f"output.dir={tmp_path / 'again'}")  # the same code: reused
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "this code is on the Hub already" in again.stdout
    assert_installed_the_mounted_wheel(alice.jobs.job(alice.jobs.ids()[-1]), "alice/snarkle")
    assert [n for n in alice.files("alice/snarkle", "phi3space-code") if n.endswith(".whl")] == [wheel]
