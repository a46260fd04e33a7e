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
from phi3space.jobs import spec
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
        spec.from_dict({"data": {"dataset": "alice/qa"}, "compute": {"backend": "hf-jobs"}})
    assert "compute.backend: hf-jobs needs output.push_to" in str(info.value) and "push_checkpoints" not in str(info.value)
    cfg = spec.from_dict({"data": {"dataset": "alice/qa"}, "compute": {"backend": "hf-jobs"}},
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
    cfg = spec.from_dict({"data": {"dataset": "alice/qa"}, "output": {"push_to": "auto"},
                          "compute": {"backend": "hf-jobs", "timeout": typed}})
    assert cfg.compute.timeout == kept and spec.timeout_seconds(kept) == spec.timeout_seconds(typed)


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


def test_a_json_row_lacking_a_column_is_dropped_and_counted_when_training(tiny_model, tmp_path, capsys):
    """Issue 29: one row without its answer column ended inspect, train and eval in a bare StopIteration."""
    import json

    from helpers import QA_PAIRS, memorise_config, write_config

    rows = [{"question": q, "answer": a} for q, a in QA_PAIRS] + [{"question": "Where is the answer?"}]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = RunDir(tmp_path / "run")
    cfg = write_config(tmp_path / "run.yaml", memorise_config(tiny_model, str(data), run.path, training__max_steps=1))
    code, err = run_main(["train", str(cfg)], capsys)
    assert code == 0, err
    started = next(e for e in run.read_events()[0] if e["type"] == "run_started")
    assert started["dataset"]["kept"] == 4 and started["dataset"]["dropped"] == {"missing a prompt or an answer column": 1}


def test_a_job_id_written_into_another_visitors_card_cannot_hide_the_owners_run(hub, tmp_path):
    """Issue 29: mallory writes alice's job id into the card of a repo of her own (her config copy even names
    alice's repo). After a restart that wiped the disk, whoever lists first, each sees her own run, and the record
    speaks only for the repo it was read from."""
    from huggingface_hub import HfApi

    from phi3space.hub.records import publish_queued

    alice, mallory, job = "hf_AliceSquat0123456789abcdefg", "hf_MallorySquat0123456789abcde", "0123456789ab"
    hub.add_user("alice", alice)
    hub.add_user("mallory", mallory)
    HfApi(token=alice).create_repo("alice/real")
    HfApi(token=mallory).create_repo("mallory/copy")
    publish_queued(config.from_dict({"data": {"dataset": "alice/qa"}, "output": {"push_to": "alice/real"}}),
                   "alice/real", job, "alice", alice, created=1.0)
    publish_queued(config.from_dict({"data": {"dataset": "mallory/qa"}, "output": {"push_to": "alice/real"}}),
                   "mallory/copy", job, "mallory", mallory, created=0.5)

    for order in (("mallory", "alice"), ("alice", "mallory")):  # two restarts, each with a wiped disk
        runner = JobRunner(tmp_path / "-".join(order), space=False, command=lambda p: [sys.executable, "-c", "pass"])
        tokens = {"alice": alice, "mallory": mallory}
        try:
            ids = {who: runner.restore_from_hub(who, tokens[who]) for who in order}
            assert ids[order[0]] == [job] and len(ids[order[1]]) == 1 and ids[order[1]] != [job]
            assert runner.restore_from_hub(order[1], tokens[order[1]]) == []  # asked again: listed once, same id
            for who, repo, dataset in (("alice", "alice/real", "alice/qa"), ("mallory", "mallory/copy", "mallory/qa")):
                [listed] = runner.list(who)
                cfg = config.load(listed.run.config)
                assert (cfg.output.push_to, cfg.data.dataset) == (repo, dataset)
            with pytest.raises(ConfigError, match="among your jobs"):
                runner.get(job, order[1])
        finally:
            runner.shutdown()


def test_a_base_model_repo_given_as_an_adapter_is_named_as_such(hub_model, tmp_path, capsys):
    """Issue 29: a Hub repo that is a base model, given to chat (CLI and /chat) as an adapter, was a
    FileNotFoundError."""
    code, err = run_main(["chat", "--adapter", hub_model, "--prompt", "hi"], capsys)
    assert code == 2 and f"error: {hub_model} is not an adapter: the repo has no adapter_config.json" in err
    assert f"hint: To chat with a whole model give it as --base {hub_model}" in err
    runner = JobRunner(tmp_path / "data", space=False, command=lambda p: [sys.executable, "-c", "pass"])
    try:  # what /chat and the chat tab call
        with pytest.raises(ModelError, match="is not an adapter"):
            resolve_for_visitor(hub_model, Visitor("alice", None), runner, space=False)
    finally:
        runner.shutdown()


def test_a_data_folder_that_is_a_file_stops_the_app_with_one_message(tmp_path):
    """Issue 29: PHI3SPACE_DATA_DIR naming a file ended the app's start in a FileExistsError traceback."""
    import subprocess

    from helpers import ROOT, cli_env

    taken = tmp_path / "data"
    taken.write_text("my notes\n")
    result = subprocess.run([sys.executable, "app.py"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=cli_env(PHI3SPACE_DATA_DIR=str(taken)))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"error: the data folder {taken} is a file, not a folder" in result.stderr
    assert "hint: Point PHI3SPACE_DATA_DIR at a folder" in result.stderr and taken.read_text() == "my notes\n"


@pytest.mark.parametrize("ref, said", [("alice/..qa", "is not a valid Hub ID"), ("alice/q\x00a", "control character")])
def test_every_jobs_inputs_pass_the_hub_id_rule_before_anything_starts(ref, said):
    """An eval job from the page with such a --data went to the Hub client and failed there with a traceback."""
    from phi3space.jobs.submit import check_inputs_allowed

    for space in (False, True):
        with pytest.raises(ConfigError, match=said) as info:
            check_inputs_allowed({"data": ref}, (), space)
        assert info.value.message.startswith("data: ")


def test_a_job_id_of_kilobytes_is_not_echoed_back(tmp_path):
    """Issue 29: /job_status echoed a 10,000-character id in its error."""
    runner = JobRunner(tmp_path / "data", space=False, command=lambda p: [sys.executable, "-c", "pass"])
    try:
        with pytest.raises(ConfigError) as info:
            runner.get("x" * 10_000, "me")
        assert info.value.message == "no job 'xxxxxxxxxxxx'... (10,000 characters) among your jobs"
    finally:
        runner.shutdown()


def test_two_submissions_in_one_second_get_two_auto_repos(alice, tmp_path, monkeypatch):
    """Issue 29: the second of two quick submissions resolved 'auto' to the first's repo and was refused with a
    message about the first job."""
    import time

    from helpers import CANARY

    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20261205-120000")  # both in the same second
    runner = JobRunner(tmp_path / "data", space=True, command=lambda p: [sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        jobs = [runner.submit(config.from_dict({"data": {"dataset": "alice/qa"}, "training": {"max_steps": 1}}),
                              "alice", CANARY) for _ in range(2)]
        repos = [config.load(j.run.config).output.push_to for j in jobs]
        assert repos == ["alice/phi-3-mini-4k-instruct-qa-lora-20261205-120000",
                         "alice/phi-3-mini-4k-instruct-qa-lora-20261205-120000-2"]
    finally:
        runner.shutdown()


def test_after_a_restart_a_job_that_trained_says_so_and_a_stopped_queued_one_stays_stopped(alice, tmp_path):
    """Issue 29: after a restart a job that had trained 80 steps was 'waiting in the queue', and jobs stopped while
    queued came back failed."""
    import json

    from helpers import CANARY
    from huggingface_hub import HfApi

    sleeper = lambda p: [sys.executable, "-c", "import time; time.sleep(60)"]  # noqa: E731
    cfg = lambda name: config.from_dict({"data": {"dataset": "alice/qa"}, "training": {"max_steps": 100},  # noqa: E731
                                         "output": {"push_to": f"alice/{name}"}})
    runner = JobRunner(tmp_path / "before", space=True, slots=1, command=sleeper)
    try:
        trained = runner.submit(cfg("trained"), "alice", CANARY)  # takes the one slot
        stopped = runner.submit(cfg("stopped"), "alice", CANARY)  # waits in the queue, then is stopped there
        assert runner.state(runner.cancel(stopped.id, "alice"))["status"] == "cancelled"
    finally:
        runner.shutdown()
    events = [{"type": "run_started", "time": 1.0, "max_steps": 100},
              {"type": "progress", "time": 2.0, "step": 80, "max_steps": 100, "loss": 1.5}]
    api = HfApi(token=CANARY)  # what its checkpoints pushed before the Space restarted
    api.create_branch("alice/trained", branch="checkpoints")
    api.upload_file(path_or_fileobj="".join(json.dumps(e) + "\n" for e in events).encode(), path_in_repo="events.jsonl",
                    repo_id="alice/trained", revision="checkpoints")
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="checkpoint-80/adapter_config.json", repo_id="alice/trained",
                    revision="checkpoints")

    runner = JobRunner(tmp_path / "after", space=True, command=sleeper)  # the disk was wiped
    try:
        assert sorted(runner.restore_from_hub("alice", CANARY)) == sorted([trained.id, stopped.id])
        was_training = runner.state(runner.get(trained.id, "alice"))
        assert was_training["status"] == "failed" and was_training["step"] == 80
        assert was_training["error"]["message"] == "the Space restarted while this job was training (step 80)"
        assert was_training["error"]["hint"].startswith("Resume it: it continues from its newest checkpoint")
        assert runner.state(runner.get(stopped.id, "alice"))["status"] == "cancelled"
    finally:
        runner.shutdown()


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
