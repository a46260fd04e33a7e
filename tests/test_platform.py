"""The real Space platform, simulated on a CPU machine: deciding "on a Space" as gradio does, a GPU that nvidia-smi
sees and torch cannot use (a fake nvidia-smi on PATH), ZeroGPU, free GPU memory shared with chat, sign-ins that
expire, write access proven before any weights load, the idle pause, SQLite kept off bucket mounts, and the files
that pin the Space's torch build."""

import os
import re
import sys
import time

import pytest
import yaml
from helpers import ROOT, memorise_config, run_cli

from phi3space import config, datadir
from phi3space.datadir import DataDirBusy
from phi3space.engine import hardware as runtime
from phi3space.errors import AuthError, ConfigError, ModelError
from phi3space.hub.space import on_space
from phi3space.jobs.idle import PAUSE_ENV
from phi3space.jobs.scheduler import JobRunner
from phi3space.run import RunDir

ALICE = "tok-alice-platform-0123456789"
OWNER = "tok-owner-platform-0123456789"


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    """An nvidia-smi on PATH that sees one NVIDIA L4 (22.5 GB) with FAKE_GPU_FREE_MB free; torch here is the CPU
    build, so this is a GPU that torch cannot use."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text('#!/bin/sh\ncase "$1" in\n  -L) echo "GPU 0: NVIDIA L4 (UUID: GPU-1234)";;\n'
                   '  *) echo "0, NVIDIA L4, 23034, ${FAKE_GPU_FREE_MB:-20000}, 550.54.15";;\nesac\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv(runtime.ALLOW_CPU_ENV, raising=False)
    runtime.torch_cuda.cache_clear()
    yield bin_dir
    runtime.torch_cuda.cache_clear()


def cfg(**sections):
    return config.from_dict({"data": {"dataset": "alice/qa"}, **sections})


def test_on_a_space_is_decided_as_gradio_does(monkeypatch):
    monkeypatch.delenv("SYSTEM", raising=False)
    monkeypatch.setenv("SPACE_ID", "someone/phi3space")
    assert not on_space()  # a SPACE_ID copied into a shell is not a Space
    monkeypatch.setenv("SYSTEM", "spaces")
    assert on_space()
    from gradio.utils import get_space

    assert get_space() == "someone/phi3space"


@pytest.mark.slow
def test_a_gpu_that_torch_cannot_use_is_reported(fake_gpu, tmp_path, tiny_model):
    assert runtime.gpus()[0].name == "NVIDIA L4" and runtime.gpu_count() == 1
    problem = runtime.gpu_problem()
    assert isinstance(problem, ModelError)
    assert "nvidia-smi sees 1 GPU (driver 550.54.15), but torch" in problem.message and "CPU-only build" in problem.message
    assert "pre-requirements.txt" in problem.hint
    assert [problem.message + ". " + problem.hint] == runtime.startup_report()  # the page's banner and the log

    runner = JobRunner(tmp_path / "data", space=False, command=lambda p: [sys.executable, "-c", "pass"])
    try:
        with pytest.raises(ModelError, match="cannot use it"):
            runner.submit(cfg(), "me")
    finally:
        runner.shutdown()

    # The trainer itself refuses too (a run started from the command line), before any weights load.
    run_dir = tmp_path / "run"
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(memorise_config(tiny_model, str(tmp_path / "qa.jsonl"), run_dir)))
    (tmp_path / "qa.jsonl").write_text('{"prompt": "a", "completion": "b"}\n' * 8)
    ran = run_cli("train", str(path))
    assert ran.returncode == 2 and "cannot use it: training would run on the CPU" in ran.stderr, ran.stderr[-2000:]
    assert "Traceback" not in ran.stderr
    assert not any(e["type"] == "run_started" for e in RunDir(run_dir).read_events()[0])


def test_allow_cpu_is_the_owners_explicit_choice(fake_gpu, monkeypatch):
    monkeypatch.setenv(runtime.ALLOW_CPU_ENV, "1")
    assert runtime.gpu_problem() is None


def test_the_fit_warning_uses_free_memory(fake_gpu, monkeypatch):
    from phi3space.ui import forms

    monkeypatch.setenv("FAKE_GPU_FREE_MB", str(6 * 1024))  # 22.5 GB card, 6 GB free (chat or another process)
    big = config.from_dict({"data": {"dataset": "d"}, "training": {"max_steps": 100, "max_length": 2048}})
    assert forms.gpu_memory_gb() == pytest.approx(6.0)
    warning = next(w for w in forms.plan(big, None, forms.gpu_memory_gb()).warnings if "memory" in w)
    assert "6 GB free" in warning


def test_zero_gpu_refuses_training(monkeypatch, tmp_path):
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    refusal = runtime.training_refusal()
    assert isinstance(refusal, ConfigError) and "ZeroGPU" in refusal.message
    assert "Hugging Face Jobs" in refusal.hint and "duplicate this Space" in refusal.hint
    runner = JobRunner(tmp_path / "data", space=False, command=lambda p: [sys.executable, "-c", "pass"])
    try:
        with pytest.raises(ConfigError, match="ZeroGPU"):
            runner.submit(cfg(), "me")
    finally:
        runner.shutdown()


def test_chat_gives_the_gpu_back_to_a_starting_job(fake_gpu, tmp_path, monkeypatch):
    from phi3space.chat import engines
    from phi3space.ui import chat_service

    monkeypatch.setenv(runtime.ALLOW_CPU_ENV, "1")  # the fake GPU: let the (stand-in) job start
    script = tmp_path / "job.py"
    script.write_text("import time\nprint('waiting', flush=True)\ntime.sleep(60)\n")
    runner = JobRunner(tmp_path / "data", space=False, poll_s=0.05, command=lambda p: [sys.executable, str(script)])
    try:
        chat_service._give_gpu_back_to(runner)
        engines._engines["some/base"] = object()  # a chat model held on the GPU
        job = runner.submit(cfg(), "me")
        deadline = time.time() + 20
        while time.time() < deadline and runner.get(job.id, "me").phase != "running":
            time.sleep(0.05)
        assert runner.get(job.id, "me").phase == "running"
        assert engines.held() == []  # dropped before the job started

        monkeypatch.setenv("FAKE_GPU_FREE_MB", "2048")  # the job took the GPU: no room for a 7.6 GB chat model
        with pytest.raises(ModelError, match="the GPU is training") as info:
            chat_service.engine_for("microsoft/Phi-3-mini-4k-instruct", None, runner)
        assert "Chat is back when that job ends" in info.value.hint
        runner.cancel(job.id, "me")
    finally:
        engines.drop_all()
        runner.shutdown()


def test_a_sign_in_that_expires_before_the_run_ends_is_refused_at_submit(tmp_path):
    runner = JobRunner(tmp_path / "data", space=False, command=lambda p: [sys.executable, "-c", "pass"])
    try:
        run = cfg(model={"base": "microsoft/Phi-3-mini-4k-instruct"}, training={"max_steps": 500})
        with pytest.raises(AuthError, match="has expired"):
            runner.submit(run, "me", "tok-me-0123456789", expires_at=time.time() - 5)
        with pytest.raises(AuthError) as info:  # 500 steps of Phi-3-mini on a CPU: days, not 30 minutes
            runner.submit(run, "me", "tok-me-0123456789", expires_at=time.time() + 30 * 60)
        assert "expires in 30 min, before this run can end" in info.value.message
        assert "Sign out and sign in again" in info.value.hint and "max_steps" in info.value.hint
        assert runner.list("me") == []
        tiny = cfg(model={"base": "microsoft/Phi-3-mini-4k-instruct"}, training={"max_steps": 1, "batch_size": 1,
                                                                                  "grad_accum": 1, "max_length": 64})
        assert runner.submit(tiny, "me", "tok-me-0123456789", expires_at=time.time() + 3600).id  # it lasts
        assert runner.submit(run, "me", "tok-me-0123456789", expires_at=None).id  # unknown expiry: an API token
    finally:
        runner.shutdown()


def test_the_page_passes_the_sign_in_expiry(tmp_path, hub):
    """gradio hands a page visitor's gr.OAuthToken with expires_at; /submit_job refuses an expiring one."""
    import gradio as gr

    from phi3space.ui import api
    from phi3space.ui.services import set_runner

    class Token:
        token, scope, expires_at = ALICE, "openid profile", int(time.time()) + 120

    class Profile:
        username = "alice"

    runner = JobRunner(tmp_path / "data", space=False, command=lambda p: [sys.executable, "-c", "pass"])
    set_runner(runner)
    try:
        text = yaml.safe_dump({"data": {"dataset": "alice/qa"}, "training": {"max_steps": 2000}})
        with pytest.raises(gr.Error, match="expires in 2 min"):
            api.submit_job(text, Profile(), Token())
    finally:
        set_runner(None)
        runner.shutdown()


@pytest.mark.slow
def test_an_org_without_write_access_is_refused_before_any_weights_load(hub, tiny_model, tmp_path):
    hub.add_user("alice", ALICE, orgs=("acme",), org_roles={"acme": "read"})
    hub.add_repo("acme/shared-adapter", {"README.md": "# shared"})  # exists: create_repo(exist_ok) alone says nothing
    run_dir = tmp_path / "run"
    path = tmp_path / "run.yaml"
    data = tmp_path / "qa.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n' * 8)
    for repo in ("acme/shared-adapter", "acme/new-adapter"):
        path.write_text(yaml.safe_dump(memorise_config(tiny_model, str(data), run_dir, output__push_to=repo)))
        t0 = time.time()
        ran = run_cli("train", str(path), token=ALICE)
        assert ran.returncode == 2 and f"cannot push to {repo}" in ran.stderr, ran.stderr[-2000:]
        assert "granted this app access" in ran.stderr and time.time() - t0 < 60
        assert not any(e["type"] == "run_started" for e in RunDir(run_dir).read_events()[0])  # no weights loaded
    assert [r.path for r in hub.requests if "/auth-check/write" in r.path] == [
        "/api/models/acme/shared-adapter/auth-check/write"]
    assert hub.repo("acme/new-adapter") is None and hub.commits("acme/shared-adapter") == []


def test_on_a_space_write_access_is_proven_at_submit(hub, tmp_path, monkeypatch):
    hub.add_user("alice", ALICE, orgs=("acme",), org_roles={"acme": "read"})
    hub.add_repo("alice/qa", repo_type="dataset")  # the dataset is checked first
    runner = JobRunner(tmp_path / "data", space=True, command=lambda p: [sys.executable, "-c", "pass"])
    try:
        with pytest.raises(AuthError, match="cannot push to acme/x"):
            runner.submit(cfg(output={"push_to": "acme/x"}), "alice", ALICE)
        assert runner.list("alice") == []
        job = runner.submit(cfg(), "alice", ALICE)  # on a Space: pushed to the visitor's account by default
        pushed = config.load(runner.get(job.id, "alice").run.config).output
        assert re.fullmatch(r"alice/phi-3-mini-4k-instruct-qa-lora-\d{8}-\d{6}", pushed.push_to)  # a repo per run
        assert pushed.push_checkpoints is True
        card = hub.files(pushed.push_to)["README.md"].decode()  # the job's record: how it is found after a restart
        record = yaml.safe_load(card.split("---")[1])["phi3space"]
        assert record["job"] == job.id and record["owner"] == "alice" and record["status"] == "queued"
        assert "phi3space" in yaml.safe_load(card.split("---")[1])["tags"]
        with pytest.raises(ConfigError, match="has not finished"):  # one unfinished job per repo
            runner.submit(cfg(output={"push_to": pushed.push_to}), "alice", ALICE)
    finally:
        runner.shutdown()


def test_an_idle_space_is_paused_with_the_owners_token_but_never_while_a_job_runs(hub, tmp_path, monkeypatch):
    hub.add_user("owner", OWNER)
    hub.add_user("alice", ALICE)
    hub.add_repo("owner/phi3space", repo_type="space")
    hub.add_repo("alice/qa", repo_type="dataset")
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "owner/phi3space")
    monkeypatch.setenv("HF_TOKEN", OWNER)
    monkeypatch.setenv(PAUSE_ENV, str(0.5 / 60))  # half a second
    script = tmp_path / "job.py"
    script.write_text("import time\ntime.sleep(60)\n")
    runner = JobRunner(tmp_path / "data", space=True, poll_s=0.05, command=lambda p: [sys.executable, str(script)])
    try:
        job = runner.submit(cfg(), "alice", ALICE)
        time.sleep(1.5)  # three idle periods, but a job runs
        assert hub.paused == [] and runner.get(job.id, "alice").phase == "running"
        runner.cancel(job.id, "alice")
        deadline = time.time() + 20
        while time.time() < deadline and not hub.paused:
            time.sleep(0.05)
        assert hub.paused == [("owner/phi3space", OWNER)]
        time.sleep(1)
        assert len(hub.paused) == 1
    finally:
        runner.shutdown()


def test_sqlite_never_lives_on_a_bucket_mount(tmp_path, monkeypatch):
    mounts = f"/dev/vda / ext4 rw 0 0\nhf-mount {tmp_path}/bucket fuse.hf-mount rw 0 0\n"
    assert datadir.fuse_mount(tmp_path / "bucket" / "data", mounts) == "fuse.hf-mount"
    assert datadir.fuse_mount(tmp_path / "bucketx", mounts) is None and datadir.fuse_mount(tmp_path, mounts) is None
    monkeypatch.setattr(datadir, "fuse_mount", lambda path, mounts=None: "fuse.hf-mount")
    with pytest.raises(DataDirBusy, match="needs a local disk"):
        JobRunner(tmp_path / "data", space=True)
    JobRunner(tmp_path / "data2", space=False).shutdown()  # off a Space it is the developer's business


def test_the_space_pins_a_cuda_torch_without_touching_the_development_install():
    from packaging.requirements import Requirement
    from packaging.version import Version

    pre = [line.strip() for line in (ROOT / "pre-requirements.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
    index = next(line for line in pre if line.startswith("--extra-index-url"))
    torch = Requirement(next(line for line in pre if line.startswith("torch")))
    pinned = Version(next(iter(torch.specifier)).version)
    assert pinned.local and pinned.local.startswith("cu") and index.rstrip("/").endswith(f"/whl/{pinned.local}")
    assert int(pinned.local[2:]) >= 128  # CUDA 12.8 or newer: ZeroGPU's Blackwell cards (sm_120) need it
    assert pinned.public in runtime.ZEROGPU_TORCH_VERSIONS  # a torch ZeroGPU supports, so one pin serves every GPU Space
    reqs = (ROOT / "requirements.txt").read_text()
    assert "index-url" not in reqs  # the README's `pip install torch==2.13.0 -r requirements.txt` stays a CPU install
    runtime_torch = Requirement(next(line for line in reqs.splitlines() if line.startswith("torch")))
    assert runtime_torch.specifier.contains(Version("2.13.0")) and runtime_torch.specifier.contains(pinned)
    readme = (ROOT / "README.md").read_text()
    assert f"torch=={pinned}" in readme and "torch 2.13.0" in readme  # what the Space runs, what the tests ran on

    front = yaml.safe_load((ROOT / "README.md").read_text().split("---")[1])
    assert "suggested_storage" not in front
    assert front["hf_oauth"] is True and 480 < front["hf_oauth_expiration_minutes"] <= 43200
    assert set(front["hf_oauth_scopes"]) == {"contribute-repos", "read-repos", "gated-repos", "jobs"}
    assert front["python_version"] in ("3.10.13", "3.12.12")  # the versions ZeroGPU runs


def test_the_final_card_and_push_again_carry_the_jobs_record(trained_run, hub, tmp_path, monkeypatch):
    import shutil

    from phi3space.hub.card import RECORD_KEY
    from phi3space.hub.records import job_record

    hub.add_user("alice", ALICE)
    monkeypatch.setenv("PHI3SPACE_JOB_ID", "job123")
    monkeypatch.setenv("PHI3SPACE_JOB_OWNER", "alice")
    record = job_record("completed", 40, 40, {"train_loss": 1.5, "note": "text is dropped"})
    assert record == {"job": "job123", "owner": "alice", "status": "completed", "step": 40, "max_steps": 40,
                      "metrics": {"train_loss": 1.5}}
    from phi3space.hub.push import push_run

    push_run(shutil.copytree(trained_run, tmp_path / "run"), "alice/done", token=ALICE, record=record)
    front = yaml.safe_load(hub.files("alice/done")["README.md"].decode().split("---")[1])
    assert front[RECORD_KEY]["job"] == "job123" and front["library_name"] == "peft"
    from huggingface_hub import HfApi

    assert [m.id for m in HfApi(token=ALICE).list_models(author="alice", filter="phi3space")] == ["alice/done"]


def test_finished_runs_and_job_records_are_copied_to_a_bucket_as_whole_files(tmp_path, monkeypatch):
    """huggingface_hub's bucket API uploads through Xet, which the Hub stand-in does not speak: the one call is
    recorded here instead."""
    import sqlite3

    from huggingface_hub import HfApi

    sent = []

    def batch_bucket_files(self, bucket_id, *, add=None, **kw):
        snapshot = next(src for src, dest in add if dest == "jobs.sqlite")
        with sqlite3.connect(snapshot) as db:  # a consistent copy, readable on its own (no -wal beside it)
            rows = db.execute("SELECT id, owner, phase FROM jobs").fetchall()
        sent.append((bucket_id, self.token, sorted(dest for _, dest in add), rows))

    monkeypatch.setattr(HfApi, "batch_bucket_files", batch_bucket_files)
    monkeypatch.setenv("PHI3SPACE_BUCKET", "hf://buckets/owner/phi3space-records")
    monkeypatch.setenv("HF_TOKEN", OWNER)
    script = tmp_path / "job.py"
    script.write_text("import json, sys, time\nfrom pathlib import Path\nrun = Path(sys.argv[1]).parent\n"
                      "(run / 'checkpoint-1').mkdir()\n(run / 'checkpoint-1' / 'optimizer.pt').write_bytes(b'x')\n"
                      "with (run / 'events.jsonl').open('a') as fh:\n"
                      "    fh.write(json.dumps({'type': 'run_finished', 'status': 'completed', 'step': 1, 'time': time.time()}) + '\\n')\n")
    runner = JobRunner(tmp_path / "data", space=False, poll_s=0.05, command=lambda p: [sys.executable, str(script), str(p)])
    try:
        job = runner.submit(cfg(), "alice")
        deadline = time.time() + 30
        while time.time() < deadline and not sent:
            time.sleep(0.05)
    finally:
        runner.shutdown()
    [(bucket, token, paths, rows)] = sent
    assert bucket == "owner/phi3space-records" and token == OWNER
    assert rows == [(job.id, "alice", "done")]
    assert paths == sorted(["jobs.sqlite", f"runs/alice/{job.id}/config.yaml", f"runs/alice/{job.id}/events.jsonl",
                            f"runs/alice/{job.id}/train.log"])  # whole files; no checkpoint, no live database


def test_a_sign_in_that_expires_before_a_jobs_run_can_end_is_refused_too(tmp_path, hub, monkeypatch):
    """The submit pipeline is the same for every backend: on Hugging Face Jobs the bound is compute.timeout plus the
    platform's scheduling, and nothing is started (or billed) when the sign-in will not last."""
    token = "hf_AliceJobs0123456789abcdefgh"
    hub.add_user("alice", token)
    hub.add_repo("alice/qa", repo_type="dataset", owner_token=token)
    monkeypatch.setenv("PHI3SPACE_JOBS_IMAGE", "hf.co/spaces/alice/phi3space")
    runner = JobRunner(tmp_path / "data", space=False)
    try:
        long = config.from_dict({"data": {"dataset": "alice/qa"}, "output": {"push_to": "auto"},
                                 "compute": {"backend": "hf-jobs", "flavor": "a10g-large", "timeout": "7h"}})
        with pytest.raises(AuthError) as info:
            runner.submit(long, "alice", token, expires_at=time.time() + 3600)
        assert "expires in 1 h 00 min, before this run can end" in info.value.message
        assert "compute.timeout" in info.value.hint
        assert runner.list("alice") == [] and hub.jobs.ids() == []  # nothing started, nothing billed
        short = config.from_dict({"data": {"dataset": "alice/qa"}, "output": {"push_to": "auto"},
                                  "compute": {"backend": "hf-jobs", "flavor": "a10g-large", "timeout": "30m"}})
        job = runner.submit(short, "alice", token, expires_at=time.time() + 3600)  # 30 min + scheduling: it lasts
        assert job.backend == "hf-jobs" and job.handle and hub.jobs.ids()
        runner.cancel(job.id, "alice")
    finally:
        runner.shutdown()


def test_resume_checks_the_saved_config_again_as_submit_does(tmp_path):
    """A run's config.yaml may have come back from the visitor's own Hub repo after a restart: on a Space, resume
    refuses server paths in it, as submit would, and the run stays in its own folder whatever output.dir says."""
    from phi3space.jobs.store import Job

    runner = JobRunner(tmp_path / "data", space=True, command=lambda p: [sys.executable, "-c", "pass"])
    try:
        run = runner.data.run("alice", "edited")
        run.path.mkdir(parents=True)
        config.from_dict({"data": {"dataset": str(tmp_path / "data" / "jobs.sqlite")},
                          "output": {"dir": str(tmp_path / "elsewhere"), "push_to": "alice/x"}}).save(run.config)
        run.append("run_started", max_steps=10)
        run.append("checkpoint", step=5, path=str(run.checkpoint(5)))
        run.finish("failed", {"kind": "interrupted", "message": "the Space restarted", "hint": "Resume it."}, step=5)
        runner.store.add(Job(id="edited", owner="alice", name="n", run_dir=str(run.path), phase="done"))
        with pytest.raises(ConfigError, match="is a path on the server"):
            runner.resume("edited", "alice", "hf_AliceToken0123456789abcd")
        assert runner.get("edited", "alice").phase == "done" and not (tmp_path / "elsewhere").exists()
    finally:
        runner.shutdown()
