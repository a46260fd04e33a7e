"""Rough edges a careless user or an attacker finds: each ends in one clear message with a hint, never a traceback,
and loses nothing (long strings, a token pasted as an adapter ID, an empty prompt, a YAML section written twice, a
merge into a file or an unwritable folder, a bad push destination, a locked job store, chat while a push waits)."""

import shutil
import sqlite3
import sys

import pytest

from phi3space import cli, config
from phi3space.engine.adapters import resolve_adapter
from phi3space.errors import ConfigError, ModelError
from phi3space.jobs.scheduler import JobRunner
from phi3space.jobs.store import Job, JobStore, StoreBusy
from phi3space.run import RunDir
from phi3space.ui.chat_service import build_messages, resolve_for_visitor
from phi3space.ui.services import Visitor

TOKEN = "hf_PastedByMistake0123456789ab"


def run_main(argv, capsys) -> tuple[int, str]:
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.mark.parametrize("key", ["data.dataset", "model.base"])
def test_a_string_of_kilobytes_is_one_message_not_file_name_too_long(key):
    with pytest.raises(ConfigError) as info:
        config.from_dict({"data": {"dataset": "x"}}, [f"{key}={'a/' * 2500}"])
    assert f"{key}: 5,000 characters is too long for a Hub ID or a path" in str(info.value)


def test_an_adapter_id_that_is_a_token_or_kilobytes_long_never_reaches_the_hub(hub):
    for ref, said in ((TOKEN, "looks like a Hugging Face access token"), ("x" * 5000, "too long")):
        with pytest.raises(ModelError, match=said) as info:
            resolve_adapter(ref)
        assert TOKEN not in str(info.value)
    assert not any(TOKEN in r.path for r in hub.requests), "the token went to the Hub in a URL"


def test_an_empty_prompt_is_refused_not_answered(capsys):
    with pytest.raises(ConfigError, match="message: empty"):
        build_messages([], "   ", None)
    code, err = run_main(["chat", "--prompt", ""], capsys)
    assert code == 2 and "error: --prompt: empty" in err and "hint: " in err


def test_a_yaml_section_written_twice_is_refused():
    with pytest.raises(ConfigError) as info:
        config.loads("data: {dataset: x}\ntraining:\n  epochs: 1\ntraining:\n  max_steps: 5\n")
    assert "'training' is written twice (first on line 2)" in str(info.value)
    assert "merge the two" in info.value.hint


def test_merge_into_a_file_or_an_unwritable_folder_says_so_before_any_model_loads(tmp_path, capsys):
    existing = tmp_path / "model.bin"
    existing.write_bytes(b"keep me")
    code, err = run_main(["merge", str(tmp_path / "no-run"), "--out", str(existing)], capsys)
    assert code == 2 and f"--out {existing} is a file, not a folder" in err
    assert existing.read_bytes() == b"keep me"
    code, err = run_main(["merge", str(tmp_path / "no-run"), "--out", "/proc/phi3space-x"], capsys)
    assert code == 2 and "cannot be written" in err and "hint: Give a folder you may write to" in err


def test_push_to_a_malformed_repo_id_is_named_as_such(tmp_path, capsys):
    code, err = run_main(["push", str(tmp_path), "--to", "bad id!!"], capsys)
    assert code == 2 and "--to: 'bad id!!' is not a Hub repo ID" in err and "namespace" not in err


def test_a_locked_job_store_is_a_message_and_leaves_no_run_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(JobStore, "TIMEOUT_S", 0.2)
    runner = JobRunner(tmp_path / "data", space=False, command=lambda p: [sys.executable, "-c", "pass"])
    other = sqlite3.connect(runner.store.path, timeout=0.2)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another process holds the store
        data = tmp_path / "qa.jsonl"
        data.write_text('{"prompt": "p", "completion": "c"}\n')
        with pytest.raises(StoreBusy, match="stayed locked by another process") as info:
            runner.submit(config.from_dict({"data": {"dataset": str(data)}, "training": {"max_steps": 1}}), "me")
        assert "Try again in a moment" in info.value.hint
        other.rollback()
        assert list(runner.data.run_folders()) == [] and runner.list("me") == []
    finally:
        other.close()
        runner.shutdown()


@pytest.mark.slow  # a trained run
def test_chat_takes_a_trained_adapter_whose_push_is_still_pending(trained_run, tmp_path):
    runner = JobRunner(tmp_path / "data", space=False, command=lambda p: [sys.executable, "-c", "pass"])
    try:
        run = runner.data.run("me", "abcdefabcdef")
        shutil.copytree(trained_run, run.path)
        run.events.unlink()
        run.append("run_started", max_steps=40)
        run.finish("failed", {"kind": "hub", "message": "push to me/x failed", "hint": "Push it later."}, step=40,
                   adapter=str(run.path))
        runner.store.add(Job(id="abcdefabcdef", owner="me", name="n", run_dir=str(run.path), phase="done"))
        assert runner.status(runner.get("abcdefabcdef", "me"))[1].push_pending
        assert resolve_for_visitor("abcdefabcdef", Visitor("me", None), runner, space=False) == RunDir(run.path).path
    finally:
        runner.shutdown()


def test_on_a_space_a_dataset_typo_is_refused_before_any_repo_is_created(hub, tmp_path):
    alice = "hf_AliceTypo0123456789abcdefgh"
    hub.add_user("alice", alice)
    runner = JobRunner(tmp_path / "data", space=True, command=lambda p: [sys.executable, "-c", "pass"])
    try:
        cfg = config.from_dict({"data": {"dataset": "alice/qaa"}, "training": {"max_steps": 1}},
                               defaults=runner.pipeline.defaults())
        with pytest.raises(Exception, match="alice/qaa was not found") as info:
            runner.submit(cfg, "alice", alice)
        assert info.value.kind == "data"
        assert not any(r.method == "POST" and "/repos/create" in r.path for r in hub.requests)  # no empty repo left
        assert runner.list("alice") == []
    finally:
        runner.shutdown()


def test_on_a_space_a_jobs_config_without_a_destination_goes_to_auto():
    with pytest.raises(ConfigError) as info:  # off a Space the destination must be said
        config.from_dict({"data": {"dataset": "alice/qa"}, "compute": {"backend": "hf-jobs"}})
    assert "compute.backend: hf-jobs needs output.push_to" in str(info.value) and "push_checkpoints" not in str(info.value)
    cfg = config.from_dict({"data": {"dataset": "alice/qa"}, "compute": {"backend": "hf-jobs"}},
                           defaults={"output.push_to": "auto", "output.push_checkpoints": True})
    assert (cfg.output.push_to, cfg.output.push_checkpoints) == ("auto", True)


def test_a_job_store_damaged_while_the_app_runs_is_rebuilt_from_the_run_folders(tmp_path):
    runner = JobRunner(tmp_path / "data", space=False, poll_s=0.05, command=lambda p: [sys.executable, "-c", "pass"])
    try:
        data = tmp_path / "qa.jsonl"
        data.write_text('{"prompt": "p", "completion": "c"}\n')
        first = runner.submit(config.from_dict({"data": {"dataset": str(data)}, "training": {"max_steps": 1}}), "me")
        for suffix in ("-wal", "-shm"):
            (tmp_path / "data" / f"jobs.sqlite{suffix}").unlink(missing_ok=True)
        runner.store.path.write_bytes(b"this is not a database any more " * 100)
        assert [j.id for j in runner.list("me")] == [first.id]  # listed again from its folder, not an error
        assert runner.store.set_aside is not None and runner.store.set_aside.exists()
        second = runner.submit(config.from_dict({"data": {"dataset": str(data)}, "training": {"max_steps": 1}}), "me")
        assert [j.id for j in runner.list("me")] == [first.id, second.id]
    finally:
        runner.shutdown()


def test_the_page_points_a_pending_push_at_its_button_not_the_command_line():
    from phi3space.run import RunState
    from phi3space.ui.follow import PUSH_AGAIN, progress_html

    state = RunState.from_events([
        {"type": "run_started", "max_steps": 4},
        {"type": "error", "kind": "auth", "message": "push to me/x failed: the token expired",
         "hint": "Push it later with: python -m phi3space push data/runs/me/x"},
        {"type": "run_finished", "status": "failed", "step": 4, "adapter": "data/runs/me/x"}])
    html = progress_html(Job(id="x", owner="me", name="run", run_dir="data/runs/me/x"), "failed", state, None)
    assert state.push_pending and "Push again" in html and "python -m phi3space" not in html
    assert "Push again" in PUSH_AGAIN


@pytest.mark.parametrize("typed, kept", [("4H", "4h"), ("2D", "2d"), ("90 m", "90m"), ("5400", "5400"), ("5400.5", "5400")])
def test_a_jobs_timeout_is_spelled_the_way_the_jobs_client_reads_it(typed, kept):
    """The client takes a lower-case unit as the last character, or whole seconds: '4H' would fail at start."""
    cfg = config.from_dict({"data": {"dataset": "alice/qa"}, "output": {"push_to": "auto"},
                            "compute": {"backend": "hf-jobs", "timeout": typed}})
    assert cfg.compute.timeout == kept and config.timeout_seconds(kept) == config.timeout_seconds(typed)


def test_the_app_starts_offline_with_a_saved_token_and_says_the_hub_cannot_be_reached(hub, tmp_path, monkeypatch):
    import phi3space.ui as ui
    from phi3space.ui import services

    monkeypatch.setenv("HF_TOKEN", "hf_SavedOnThisLaptop0123456789ab")
    monkeypatch.setattr(ui, "_hub_unreachable", False)
    monkeypatch.setenv("PHI3SPACE_RETRY_BASE_S", "0.01")
    hub.down = True  # the laptop is offline
    runner = JobRunner(tmp_path / "data", space=False, command=lambda p: [sys.executable, "-c", "pass"])
    services.set_runner(runner)
    try:
        demo = ui.build_app()  # no ConnectError out of gradio's mock login
        assert demo is not None and ui.login_available() is False
        assert "the Hugging Face Hub cannot be reached" in ui.local_mode_text()
    finally:
        hub.down = False
        services.set_runner(None)
        runner.shutdown()


def test_who_a_token_belongs_to_outlasts_a_hub_outage(hub, monkeypatch):
    from phi3space.errors import AuthError, HubError
    from phi3space.hub import access

    token = "hf_WhoamiOutage0123456789abcdef"
    hub.add_user("dora", token)
    monkeypatch.setenv("PHI3SPACE_RETRY_BASE_S", "0.01")
    assert access.whoami(token)["name"] == "dora"
    monkeypatch.setattr(access, "WHOAMI_TTL_S", 0)  # the answer is old now
    hub.down = True
    try:
        assert access.whoami(token)["name"] == "dora"  # the last answer stands while the Hub is away
        with pytest.raises(HubError, match="could not reach the Hub"):
            access.whoami("hf_NeverSeenBefore0123456789abcd")
    finally:
        hub.down = False
    hub.reset()
    with pytest.raises(AuthError):  # a refused token is refused, whatever was cached
        access.whoami(token)


def test_a_call_while_a_damaged_store_is_rebuilt_waits_for_the_runs_listed_again(tmp_path):
    """The flake behind the test above: one thread found the store damaged and started a fresh one, and another
    thread's call read the fresh store, still empty, before the runs were listed in it again."""
    import threading

    from phi3space.jobs.store import JobStore

    store = JobStore(tmp_path / "jobs.sqlite")
    relisting, release = threading.Event(), threading.Event()

    def relist():  # what the scheduler's relisting does, held at its start until the other call has begun
        relisting.set()
        release.wait(30)
        store.add(Job(id="a", owner="me", name="a", run_dir=str(tmp_path), phase="done"))

    store.on_reset = relist
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"jobs.sqlite{suffix}").unlink(missing_ok=True)
    store.path.write_bytes(b"this is not a database any more " * 100)
    finder = threading.Thread(target=store.list)
    finder.start()
    assert relisting.wait(30)
    seen = []
    other = threading.Thread(target=lambda: seen.append([j.id for j in store.list("me")]))
    other.start()
    release.set()
    finder.join()
    other.join()
    assert seen == [["a"]]
