"""Faults: a checkpoint cut short by a kill, a full disk mid-run, a loss that turns NaN, resuming a run that had
already finished; each ends in a message, and the run can go on from its newest whole checkpoint."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import memorise_config, run_cli, start_cli, write_config, write_qa_jsonl

from phi3space import cli, config
from phi3space.engine import sft, training
from phi3space.errors import Diverged
from phi3space.run import RunDir


def assert_whole_lines(run: RunDir):
    for line in run.events.read_text().splitlines():
        if line.strip():
            json.loads(line)


def test_a_checkpoint_cut_short_by_a_kill_is_skipped_and_the_run_resumes_from_the_one_before(tiny_model, tmp_path, capsys):
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    run = RunDir(tmp_path / "run")
    cfg = memorise_config(tiny_model, str(data), run.path, training__max_steps=8, training__save_steps=4,
                          training__save_total_limit=3, training__logging_steps=1)
    cfg_path = write_config(tmp_path / "run.yaml", cfg)
    assert cli.main(["train", str(cfg_path), "--set", "training.max_steps=4"]) == 0  # then to 8, with --resume
    # What SIGKILL in the middle of saving checkpoint-8 leaves: the adapter half written, no trainer state (the
    # Trainer writes that last).
    shutil.copytree(run.checkpoint(4), run.checkpoint(8))
    (run.checkpoint(8) / run.TRAINER_STATE).unlink()
    with (run.checkpoint(8) / run.ADAPTER_WEIGHTS).open("r+b") as fh:
        fh.truncate(100)
    assert run.latest_checkpoint() == run.checkpoint(4) and run.partial_checkpoints() == [run.checkpoint(8)]
    capsys.readouterr()

    assert cli.main(["train", str(cfg_path), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "checkpoint-8 is incomplete" in out and "resuming from checkpoint-4" in out
    events, _ = run.read_events()
    restarted = [e for e in events if e["type"] == "run_started"][-1]
    assert restarted["resumed_from"].endswith("checkpoint-4")
    steps = [e["step"] for e in events[events.index(restarted):] if e["type"] == "progress"]
    assert steps[0] == 5 and steps[-1] == 8 and run.state().status == "completed"
    assert run.checkpoint_is_whole(run.checkpoint(8))  # saved again, whole


def test_resume_never_trains_past_the_end(tiny_model, tmp_path, capsys):
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    run = RunDir(tmp_path / "run")
    cfg_path = write_config(tmp_path / "run.yaml", memorise_config(tiny_model, str(data), run.path, training__max_steps=4,
                                                                   training__save_steps=4))
    assert cli.main(["train", str(cfg_path)]) == 0
    capsys.readouterr()
    # A completed run: nothing to resume.
    assert cli.main(["train", str(cfg_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "already completed its 4 steps" in err and "phi3space push" in err
    assert run.state().status == "completed"  # the refusal wrote nothing
    # Training had finished but the run failed afterwards (its push, say): resume finishes without a step more.
    run.append("error", kind="hub", message="push failed", hint="")
    run.append("run_finished", status="failed", step=4, adapter=str(run.path), metrics={"train_loss": 1.0})
    assert cli.main(["train", str(cfg_path), "--resume"]) == 0
    assert "already holds all 4 steps" in capsys.readouterr().out
    events, _ = run.read_events()
    last_start = max(i for i, e in enumerate(events) if e["type"] == "run_started")
    assert not [e for e in events[last_start:] if e["type"] == "progress"]  # no training step
    assert run.state().status == "completed" and run.state().step == 4


def test_a_loss_that_turns_nan_stops_the_run_with_a_message(tmp_path):
    class Box:
        pass

    stop: dict = {}
    callback = training._events_callback(RunDir(tmp_path).writer(), stop)
    state, control, args = Box(), Box(), Box()
    state.global_step, state.max_steps, state.epoch = 7, 20, 0.5
    control.should_training_stop = control.should_save = False
    callback.on_train_begin(args, state, control)
    callback.on_log(args, state, control, logs={"loss": float("nan"), "learning_rate": 1e-3})
    assert stop["diverged"] == 7 and control.should_training_stop and not control.should_save
    callback.on_step_end(args, state, control)
    assert not control.should_save  # no checkpoint of NaN weights


def test_nan_loss_fails_the_run_and_keeps_no_adapter(tiny_model, tmp_path, monkeypatch):
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    cfg = config.from_dict(memorise_config(tiny_model, str(data), tmp_path / "run", training__max_steps=6,
                                           training__logging_steps=1))
    trainer = sft._trainer_class()  # trl's SFTTrainer as the project runs it
    real = trainer.compute_loss

    def poisoned(self, model, inputs, *a, **kw):  # the third step's loss is NaN, as an overflow would make it
        result = real(self, model, inputs, *a, **kw)
        if self.state.global_step < 2:
            return result
        return (result[0] * float("nan"), *result[1:]) if isinstance(result, tuple) else result * float("nan")

    monkeypatch.setattr(trainer, "compute_loss", poisoned)
    with pytest.raises(Diverged, match="NaN or infinite at step 3"):
        training.train(cfg)
    run = RunDir(cfg.output.dir)
    assert run.state().status == "failed" and run.state().error["kind"] == "diverged"
    assert not run.adapter_weights.exists()


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_full_disk_mid_run_is_a_message_and_the_run_resumes_once_space_is_freed(tiny_model, tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "64m"):
        pytest.skip("no tmpfs here (needs root and mount): the disk-full path is covered by the simulated test below")
    try:
        data = write_qa_jsonl(tmp_path / "qa.jsonl")
        run = RunDir(disk / "run")
        cfg_path = write_config(tmp_path / "run.yaml", memorise_config(
            tiny_model, str(data), run.path, training__max_steps=400, training__logging_steps=1, training__save_steps=4))
        proc = start_cli("train", str(cfg_path))
        deadline = time.time() + 120
        while time.time() < deadline and run.latest_checkpoint() is None:
            time.sleep(0.1)
        filler = disk / "filler"
        try:  # fill the disk to the last byte (the run's own checkpoints may have filled it already)
            with filler.open("wb") as fh:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
        except OSError:
            pass
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 2, err[-2000:]
        assert "error: the disk is full" in err and "--resume" in err and "Traceback" not in err
        assert_whole_lines(run)
        assert run.state().status == "failed" and run.state().error["kind"] == "disk"  # its last word, said

        filler.unlink(missing_ok=True)  # space freed
        result = run_cli("train", str(cfg_path), "--resume", "--set", "training.max_steps=12")
        assert result.returncode == 0, result.stderr[-2000:]
        assert_whole_lines(run)
        assert run.state().status == "completed" and run.state().step == 12
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.slow
def test_a_simulated_full_disk_ends_in_a_message_and_keeps_the_events_whole(tiny_model, tmp_path, monkeypatch, capsys):
    import errno

    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    run = RunDir(tmp_path / "run")
    cfg_path = write_config(tmp_path / "run.yaml", memorise_config(
        tiny_model, str(data), run.path, training__max_steps=12, training__logging_steps=1, training__save_steps=4))
    real = os.write
    writes = {"n": 0}

    def write(fd, data):  # noqa: F811  # after the first checkpoint, the disk takes half of one more event and then
        # nothing, until the room the run kept for its last word is given up
        full = (run.path / RunDir.RESERVE).exists()
        if full and run.latest_checkpoint() is not None and data.endswith(b"}\n") and os.readlink(f"/proc/self/fd/{fd}") == str(run.events):
            writes["n"] += 1
            if writes["n"] == 1:
                return real(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    assert cli.main(["train", str(cfg_path)]) == 2
    err = capsys.readouterr().err
    assert "error: the disk is full" in err and "--resume" in err
    monkeypatch.setattr(os, "write", real)
    assert_whole_lines(run)  # the half-written event was taken back
    said = run.state()  # and the run still got its last word, in the room it kept for it
    assert said.status == "failed" and said.error["kind"] == "disk" and not (run.path / RunDir.RESERVE).exists()
    assert cli.main(["train", str(cfg_path), "--resume"]) == 0
    assert_whole_lines(run)
    assert run.state().status == "completed" and run.state().step == 12


def test_a_line_left_cut_by_another_process_cannot_swallow_the_next_event(tmp_path):
    run = RunDir(tmp_path)
    run.append("run_started", max_steps=3)
    with run.events.open("a") as fh:
        fh.write('{"type": "progress", "st')  # a process killed mid-write, on a disk that kept half of it
    run.append("progress", step=2, max_steps=3, loss=1.0)
    lines = run.events.read_text().splitlines()
    assert len(lines) == 3 and lines[1].endswith('"st') and json.loads(lines[2])["step"] == 2
    assert run.state().step == 2


@pytest.mark.slow
def test_sigkill_while_a_checkpoint_is_being_saved_then_resume(tiny_model, tmp_path):
    """A real kill: the moment checkpoint-3's folder appears (the Trainer is writing into it), SIGKILL."""
    import signal

    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    run = RunDir(tmp_path / "run")
    cfg_path = write_config(tmp_path / "run.yaml", memorise_config(
        tiny_model, str(data), run.path, training__max_steps=8, training__save_steps=1, training__logging_steps=1,
        training__save_total_limit=10))
    proc = start_cli("train", str(cfg_path), output=False)
    deadline = time.time() + 120
    while time.time() < deadline and not run.checkpoint(3).exists():
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cut_short = not run.checkpoint_is_whole(run.checkpoint(3))

    result = run_cli("train", str(cfg_path), "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("checkpoint-3 is incomplete" in result.stdout) == cut_short
    assert run.state().status == "completed" and run.state().step == 8
    assert all(run.checkpoint_is_whole(p) for p in run.checkpoints())


@pytest.mark.slow
def test_a_run_holds_its_folder_a_second_run_is_refused_and_a_kill_frees_it(tiny_model, tmp_path):
    """Two trainings into one folder: the second is refused while the first runs (it held the folder, not just
    checked it); SIGKILL of the first lets the folder go with its process, and --resume continues there."""
    import signal

    from phi3space.engine.outdir import RUN_FILES, is_own_folder
    from phi3space.run import checkpoint_step

    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    run = RunDir(tmp_path / "run")
    cfg_path = write_config(tmp_path / "run.yaml", memorise_config(
        tiny_model, str(data), run.path, training__max_steps=400, training__save_steps=1, training__logging_steps=1))
    first = start_cli("train", str(cfg_path), output=False)
    deadline = time.time() + 120
    while time.time() < deadline and run.latest_checkpoint() is None:
        time.sleep(0.05)
    assert run.latest_checkpoint() is not None, "the first run never saved a checkpoint"

    second = run_cli("train", str(cfg_path), "--set", "training.max_steps=2")
    assert second.returncode == 2 and f"error: output.dir: {run.path} is in use by another run" in second.stderr
    assert "Traceback" not in second.stderr and "hint: Wait for that run to end" in second.stderr
    again = run_cli("train", str(cfg_path), "--resume")  # not even as its resume
    assert again.returncode == 2 and "is in use by another run" in again.stderr
    assert first.poll() is None, "the refused runs disturbed the first"

    first.send_signal(signal.SIGKILL)
    first.wait()
    resumed = run_cli("train", str(cfg_path), "--resume", "--set", "training.max_steps=" + str(
        run.checkpoint_progress(run.latest_checkpoint()) + 1))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert run.state().status == "completed" and run.has_adapter()
    left = sorted(p.name for p in run.path.iterdir())
    assert all(name in RUN_FILES or checkpoint_step(name) is not None for name in left), left
    assert ".phi3space.lock" not in left and is_own_folder(run)
    fresh = run_cli("train", str(cfg_path))
    assert fresh.returncode == 2 and "already holds a run" in fresh.stderr and run.state().status == "completed"


@pytest.mark.slow
def test_a_killed_export_job_is_reported_as_the_export_not_the_training(trained_run, tmp_path):
    """Issue 29: SIGKILL of an export job's process said "the training process was killed"."""
    import signal

    from phi3space.jobs.followups import Export
    from phi3space.jobs.scheduler import JobRunner
    from phi3space.jobs.store import Job

    runner = JobRunner(tmp_path / "data", space=False, poll_s=0.05)
    try:
        source = tmp_path / "data" / "runs" / "me" / "aaaaaaaaaaaa"
        shutil.copytree(trained_run, source)
        runner.store.add(Job(id="aaaaaaaaaaaa", owner="me", name="trained", run_dir=str(source), phase="done"))
        job = runner.submit(Export("aaaaaaaaaaaa", "q8_0", None), "me")
        deadline = time.time() + 60
        while time.time() < deadline and not runner.store.get(job.id).pid:
            time.sleep(0.02)
        os.killpg(runner.store.get(job.id).pid, signal.SIGKILL)
        while time.time() < deadline and runner.state(runner.get(job.id, "me"))["status"] not in ("failed", "completed"):
            time.sleep(0.05)
        s = runner.state(runner.get(job.id, "me"))
        assert s["status"] == "failed" and s["error"]["message"] == "the export process was killed by signal 9", s
    finally:
        runner.shutdown()
