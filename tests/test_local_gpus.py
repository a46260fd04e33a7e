"""A multi-GPU server: a run that asks for several GPUs (compute.gpus) takes that many slots and trains under
accelerate launch, one process per GPU; the queue stays first come, first served. The GPU count is the runner's
slot count (no GPU is needed: two CPU processes over gloo stand in for two GPUs)."""

import json
import sys

import pytest
import yaml
from helpers import fake_run_config as cfg
from helpers import fake_started as started
from helpers import job_status as status_of
from helpers import memorise_config, write_qa_jsonl
from helpers import wait_job as wait

from phi3space import config
from phi3space.errors import ConfigError
from phi3space.jobs import local as jobs
from phi3space.jobs.scheduler import JobRunner
from phi3space.run import RunDir


@pytest.fixture
def runner(tmp_path, monkeypatch, fake_trainer):
    fake = lambda config_path, gpus=1: [sys.executable, str(fake_trainer), str(config_path), f"--gpus={gpus}"]  # noqa: E731
    monkeypatch.setattr(jobs, "train_command", fake)  # what a run on several GPUs is started with
    r = JobRunner(tmp_path / "data", slots=4, grace_s=5, poll_s=0.05, command=fake, space=False)
    yield r
    r.shutdown()


def seen(job) -> dict:
    return json.loads((RunDir(job.run_dir).path / "seen.json").read_text())


def test_a_run_asking_for_all_gpus_waits_for_them_and_takes_them_all(runner):
    one = runner.submit(cfg("wait"), "me")
    two = runner.submit(cfg("wait", compute={"gpus": 2}), "me")
    wait(runner, two.id, until=started)
    assert (runner.store.get(one.id).slot, runner.store.get(two.id).slot) == (0, 1)  # side by side, in a row
    everything = runner.submit(cfg("wait", compute={"gpus": "all"}), "me")
    later = runner.submit(cfg("wait"), "me")  # one slot is free, but it waits its turn
    assert [status_of(runner, j.id) for j in (everything, later)] == ["queued", "queued"]
    runner.cancel(one.id, "me")
    runner.cancel(two.id, "me")
    wait(runner, everything.id, until=started)
    assert status_of(runner, later.id) == "queued" and runner.store.get(everything.id).gpus == 4
    assert seen(everything)["argv"][-1] == "--gpus=4"
    runner.cancel(everything.id, "me")
    wait(runner, later.id, until=started)
    assert seen(later)["argv"][-1] == "--gpus=1"
    runner.cancel(later.id, "me")
    with pytest.raises(ConfigError, match="compute.gpus: 8, but this server trains on 4 GPU slot"):
        runner.submit(cfg("wait", compute={"gpus": 8}), "me")
    with pytest.raises(ConfigError, match="compute.gpus: 'some' is not 1, a number of GPUs or all"):
        cfg("wait", compute={"gpus": "some"})


def test_the_gpus_of_a_slot_group_are_the_processes_visible_devices(runner, monkeypatch):
    envs = []
    real = jobs.job_env

    def recording(token, space):
        env = real(token, space)
        envs.append(env)
        return env

    monkeypatch.setattr(jobs, "job_env", recording)
    first = runner.submit(cfg("wait"), "me")
    pair = runner.submit(cfg("wait", compute={"gpus": 2}), "me")
    wait(runner, pair.id, until=started)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1,2"]
    for job in (first, pair):
        runner.cancel(job.id, "me")


def test_the_command_for_several_gpus_is_accelerate_launch():
    real = jobs.train_command
    assert real("/r/config.yaml") == [sys.executable, "-u", "-m", "phi3space", "train", "/r/config.yaml"]
    assert real("/r/config.yaml", 2) == [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                                         "--num_processes", "2", "--num_machines", "1", "-m", "phi3space", "train",
                                         "/r/config.yaml"]


@pytest.mark.slow
def test_two_cpu_processes_as_two_gpus_train_one_run_through_the_queue(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # gloo on CPU stands in for NCCL on GPUs
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    raw = memorise_config(tiny_model, str(data), tmp_path / "ignored", training__max_steps=4, training__batch_size=2,
                          training__logging_steps=1, training__save_steps=2, compute__gpus="all")
    runner = JobRunner(tmp_path / "data", slots=2, grace_s=5, poll_s=0.1, space=False)
    try:
        job = runner.submit(config.loads(yaml.safe_dump(raw)), "me")
        s = wait(runner, job.id, timeout=400)
    finally:
        runner.shutdown()
    assert s["status"] == "completed", RunDir(job.run_dir).log.read_text()[-3000:]
    events, _ = RunDir(job.run_dir).read_events()
    assert [e["type"] for e in events].count("run_started") == 1
    progress = [e for e in events if e["type"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3, 4] and progress[1]["epoch"] == 2.0  # two processes, one run
    assert RunDir(job.run_dir).has_adapter() and "step 4/4" in RunDir(job.run_dir).log.read_text()
