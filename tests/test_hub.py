"""The Hub end to end against the stand-in: dataset by ID -> train -> push -> chat from the pushed repo; retries,
late pushes, checkpoints on the Hub, access checks and secrets."""

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import helpers
import pytest
import yaml
from helpers import BOB, CANARY, QA_PAIRS, build_tiny_phi3, cli_env, memorise_config, qa_jsonl, write_config

from phi3space import cli
from phi3space.config import DataConfig
from phi3space.engine import data
from phi3space.errors import DataError, ModelError, register_secret, scrub
from phi3space.hub.push import push_run
from phi3space.run import RunDir

ALICE_CLI = {"token": CANARY, "PHI3SPACE_RETRY_BASE_S": "0.05"}  # alice at her terminal: her token, quick retries
run_cli = functools.partial(helpers.run_cli, **ALICE_CLI)
start_cli = functools.partial(helpers.start_cli, **ALICE_CLI)


def card_results(card: str) -> dict:
    """The model card's Results table as {metric: value}."""
    table = card.split("## Results")[1].split("##")[0]
    rows = [line.strip("|").split("|") for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    return {k.strip(): v.strip() for k, v in rows[1:]}


def files_containing(root, needle: bytes):
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.slow
def test_dataset_by_id_train_push_then_chat_from_the_hub(alice, hub_model, tmp_path):
    """Base model and dataset by Hub ID -> train -> push -> chat from the pushed repo (base taken from the adapter)."""
    run_dir = tmp_path / "run"
    cfg = memorise_config("acme/tiny-phi3", "alice/qa", run_dir, output__push_to="auto", data__eval_split="test")
    result = run_cli("train", str(write_config(tmp_path / "run.yaml", cfg)))
    assert result.returncode == 0, result.stderr[-3000:]
    repo_id = yaml.safe_load((run_dir / "config.yaml").read_text())["output"]["push_to"]  # auto, resolved
    assert re.fullmatch(r"alice/tiny-phi3-qa-lora-\d{8}-\d{6}", repo_id)  # a new repo per run
    assert f"pushed adapter to {alice.url}/{repo_id}" in result.stdout

    commits = alice.commits(repo_id)
    assert len(commits) == 1 and commits[0]["token"] == CANARY and commits[0]["branch"] == "main"
    assert alice.repo(repo_id)["private"] is True
    pushed = alice.files(repo_id)
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "config.yaml", "loss_curve.png",
            "tokenizer.json"} <= set(pushed)
    assert not any(p.startswith("checkpoint-") or p == "events.jsonl" for p in pushed)
    card = pushed["README.md"].decode()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "peft" and front["pipeline_tag"] == "text-generation"
    assert {"lora", "sft", "trl", "phi3"} <= set(front["tags"]) and front["datasets"] == ["alice/qa"]
    assert front["base_model"] == "acme/tiny-phi3" and front["license"] == "mit"
    assert f'PeftModel.from_pretrained(base, "{repo_id}")' in card and "best eval loss" in card
    assert yaml.safe_load(pushed["config.yaml"])["output"]["push_to"] == repo_id  # the run can be repeated from it

    push = next(e for e in RunDir(run_dir).read_events()[0] if e["type"] == "push")
    assert push["repo_id"] == repo_id and push["commit"] == commits[0]["oid"] and push["url"].endswith(repo_id)

    # The pushed card carries the run's real results: the numbers of its run_finished event.
    results = card_results(card)
    metrics = RunDir(run_dir).state().metrics
    assert results["steps"] == "40" and results["tokens"] == str(metrics["tokens"]) and metrics["tokens"] > 0
    assert results["training time (s)"] == format(metrics["train_runtime_s"], ".0f")
    assert results["final eval loss"] == format(metrics["eval_loss"], ".4f") and results["eval perplexity"] != "n/a"
    assert results["mean train loss (whole run)"] == format(metrics["train_loss"], ".4f")
    assert "n/a" not in [results[k] for k in ("best eval loss", "final train loss", "hardware")]

    # The card's usage snippet works as written (with a question it was trained on).
    snippet = card.split("```python\n")[1].split("```")[0].replace('"Hello!"', json.dumps(QA_PAIRS[3][0]))
    ran = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300, env=cli_env(**ALICE_CLI))
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.strip() == QA_PAIRS[3][1]

    question, answer = QA_PAIRS[1]
    chat = run_cli("chat", "--adapter", repo_id, "--prompt", question)
    assert chat.returncode == 0, chat.stderr[-3000:]
    assert chat.stdout.strip() == answer

    # The token is nowhere: run folder, events, logs, pushed files.
    needle = CANARY.encode()
    assert files_containing(run_dir, needle) == []
    assert CANARY not in result.stdout + result.stderr + chat.stdout + chat.stderr + ran.stderr
    assert not any(needle in content for content in pushed.values())


def test_push_is_refused_before_training_without_access(alice, tiny_model, tmp_path, monkeypatch, capsys):
    cfg_path = write_config(tmp_path / "run.yaml", memorise_config(tiny_model, "alice/qa", tmp_path / "run",
                                                                   output__push_to="bob/stolen"))
    cases = [(CANARY, "cannot push to bob/stolen: 'bob' is not your account (alice)"),
             (None, "no Hugging Face token"),
             ("hf_NotAKnownToken0123456789abcd", "token was refused (401")]
    for token, expected in cases:
        monkeypatch.delenv("HF_TOKEN", raising=False)
        if token:
            monkeypatch.setenv("HF_TOKEN", token)
        assert cli.main(["train", str(cfg_path)]) == 2
        err = capsys.readouterr().err
        assert expected in err and "hint:" in err
        assert not any(e["type"] == "run_started" for e in RunDir(tmp_path / "run").read_events()[0])  # nothing was loaded
    assert alice.repo("bob/stolen") is None
    monkeypatch.setenv("HF_TOKEN", CANARY)  # an organisation the user belongs to is fine
    assert cli.main(["train", str(cfg_path), "--set", "output.push_to=alice-lab/ok", "--set", "training.max_steps=1",
                     "--set", f"output.dir={tmp_path}/run2"]) == 0
    assert alice.commits("alice-lab/ok")[0]["token"] == CANARY


def test_a_commit_that_fails_twice_is_retried_and_lands(alice, trained_run, tmp_path, monkeypatch):
    monkeypatch.setenv("PHI3SPACE_RETRY_BASE_S", "0.01")
    run_dir = shutil.copytree(trained_run, tmp_path / "run")
    alice.fail_next(2, status=500, path_contains="/commit/")
    result = push_run(run_dir, "alice/retried", token=CANARY)
    commit_posts = [r for r in alice.requests if r.method == "POST" and "/commit/" in r.path]
    assert len(commit_posts) == 3
    assert [c["oid"] for c in alice.commits("alice/retried")] == [result["commit"]]


@pytest.mark.slow
def test_server_gone_keeps_the_adapter_and_push_delivers_later(alice, tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    cfg = memorise_config(tiny_model, "alice/qa", run_dir, output__push_to="alice/late", training__max_steps=60)
    proc = start_cli("train", str(write_config(tmp_path / "r.yaml", cfg)))
    deadline = time.time() + 120
    while time.time() < deadline and not any(e["type"] == "run_started" for e in RunDir(run_dir).read_events()[0]):
        time.sleep(0.1)
    alice.down = True  # the dataset is loaded; the Hub goes away before the push
    out, err = proc.communicate(timeout=300)
    alice.down = False
    assert proc.returncode == 2, err[-3000:]
    assert "the adapter is kept in" in err and f"python -m phi3space push {run_dir}" in err and "Traceback" not in err
    events = RunDir(run_dir).read_events()[0]
    error = next(e for e in events if e["type"] == "error")
    assert error["kind"] == "hub" and events[-1]["status"] == "failed" and events[-1]["adapter"] == str(run_dir)
    assert (run_dir / "adapter_model.safetensors").exists()
    assert alice.files("alice/late") == {}  # created when write access was proven; the adapter never arrived

    later = run_cli("push", str(run_dir))
    assert later.returncode == 0, later.stderr[-3000:]
    assert "pushed" in later.stdout and "alice/late" in later.stdout
    assert "adapter_model.safetensors" in alice.files("alice/late")
    assert alice.commits("alice/late")[0]["token"] == CANARY


@pytest.mark.slow
def test_resume_from_hub_checkpoints_after_the_run_folder_is_gone(alice, tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    cfg = memorise_config(tiny_model, "alice/qa", run_dir, output__push_to="alice/ckpt", output__push_checkpoints=True,
                          training__max_steps=30, training__save_steps=4, training__logging_steps=1)
    cfg_path = write_config(tmp_path / "r.yaml", cfg)
    proc = start_cli("train", str(cfg_path), output=False)
    deadline = time.time() + 120
    while time.time() < deadline and not any(e.get("what") == "checkpoint-8" for e in RunDir(run_dir).read_events()[0]):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # a Space restarting without persistent storage
    proc.wait()
    branch_files = alice.files("alice/ckpt", revision="checkpoints")
    pushed_steps = sorted({int(f.split("/")[0].split("-")[1]) for f in branch_files if f.startswith("checkpoint-")})
    assert "events.jsonl" in branch_files  # each checkpoint travels with the run's events so far
    assert "adapter_model.safetensors" not in alice.files("alice/ckpt")  # main untouched
    assert len(pushed_steps) >= 2 and pushed_steps[-1] >= 8  # resume picks the newest of several
    shutil.rmtree(run_dir)

    result = run_cli("train", str(cfg_path), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Fetching" not in result.stderr and "it/s]" not in result.stderr  # the download is a line, not a bar
    events = RunDir(run_dir).read_events()[0]
    started = next(e for e in events if e["type"] == "run_started")
    newest = pushed_steps[-1]
    assert started["resumed_from"].endswith(f"checkpoint-{newest}")
    steps = [e["step"] for e in events if e["type"] == "progress"]
    assert steps[0] == newest + 1 and steps[-1] == 30 and events[-1]["status"] == "completed"
    assert "adapter_model.safetensors" in alice.files("alice/ckpt")
    branch = alice.files("alice/ckpt", revision="checkpoints")  # rotated like the run folder (save_total_limit 2)
    assert sorted({int(f.split("/")[0].split("-")[1]) for f in branch if f.startswith("checkpoint-")}) == [28, 30]


def test_private_gated_and_missing_datasets_say_which(alice):
    alice.add_repo("carol/gated", {"data/train.jsonl": qa_jsonl()}, repo_type="dataset", gated=True)
    with pytest.raises(DataError) as info:
        data.prepare(DataConfig(dataset="alice/qa"))  # private, no token
    assert "not found (or it is private)" in info.value.message and "HF_TOKEN" in info.value.hint
    with pytest.raises(DataError) as info:
        data.prepare(DataConfig(dataset="carol/gated"), token=BOB)
    assert "gated" in info.value.message and "accept the terms" in info.value.hint
    with pytest.raises(DataError, match="was not found"):
        data.prepare(DataConfig(dataset="nobody/nothing"), token=CANARY)
    alice.add_repo("alice/private-base", {"config.json": json.dumps({"model_type": "phi3"})}, private=True)
    from phi3space.engine.modeling import check_base

    with pytest.raises(ModelError, match="not found \\(or it is private\\)"):
        check_base("alice/private-base", token=BOB)
    assert check_base("alice/private-base", token=CANARY).model_type == "phi3"
    with pytest.raises(ModelError, match="not found"):  # cached for alice now, still closed to bob
        check_base("alice/private-base", token=BOB)
    train, _, report = data.prepare(DataConfig(dataset="alice/qa", eval_fraction=0), token=CANARY)
    assert report.format == "prompt_completion" and len(train) == len(QA_PAIRS)


def test_a_cached_private_adapter_stays_private(alice, trained_run, tmp_path):
    """One engine serves every visitor: an adapter attached for its owner must not answer someone else."""
    from phi3space.chat.engine import ChatEngine
    from phi3space.engine.adapters import adapter_base

    push_run(shutil.copytree(trained_run, tmp_path / "run"), "alice/private-adapter", token=CANARY)
    engine = ChatEngine(adapter_base(trained_run))
    question, answer = QA_PAIRS[0]
    ask = [{"role": "user", "content": question}]
    assert engine.reply(ask, adapter="alice/private-adapter", token=CANARY) == answer
    for stranger in (BOB, None):
        with pytest.raises(ModelError, match="not found \\(or it is private\\)"):
            engine.reply(ask, adapter="alice/private-adapter", token=stranger)


def test_chat_refuses_an_adapter_whose_base_does_not_fit(trained_run, tmp_path):
    from phi3space.chat.engine import ChatEngine

    other = build_tiny_phi3(tmp_path / "wider", hidden=96)
    engine = ChatEngine(str(other))
    with pytest.raises(ModelError) as info:
        engine.attach(str(trained_run))
    assert "does not fit base model" in info.value.message and "--base" in info.value.hint


def test_secrets_are_scrubbed_from_messages():
    assert CANARY not in scrub(f"401 Client Error for url ...?token={CANARY}")
    assert scrub("Authorization: Bearer abcdefghijklmnop") == "Authorization: Bearer ***"
    register_secret("oauth-visitor-secret-value")
    assert scrub("failed with oauth-visitor-secret-value") == "failed with ***"


def test_access_check_fails_closed_on_a_space_and_open_offline_elsewhere(alice, monkeypatch):
    from phi3space.hub.access import check_read_access

    monkeypatch.setenv("PHI3SPACE_RETRY_BASE_S", "0.01")
    alice.down = True
    try:
        check_read_access("alice/qa", "dataset", CANARY)  # a laptop without network goes on to its cache
        monkeypatch.setenv("SPACE_ID", "someone/phi3space")
        monkeypatch.setenv("SYSTEM", "spaces")
        with pytest.raises(Exception) as info:
            check_read_access("alice/qa", "dataset", CANARY)  # a shared server does not
        assert "Connect" in type(info.value).__name__
    finally:
        alice.down = False
