"""The web app through gradio_client: submit, follow, chat with the trained adapter; cancel; queue; per-visitor
isolation with OAuth tokens (the Hub stand-in records whose token made each commit)."""

import json
import time
from pathlib import Path

import pytest
import yaml
from helpers import FINAL, client, memorise_config, status, wait_for, write_qa_jsonl

from phi3space.run import RunDir

gradio_client = pytest.importorskip("gradio_client")
pytestmark = pytest.mark.xdist_group("app_api")  # one worker: one app (the module-wide fixture) for its tests


@pytest.fixture(scope="module")
def qa(tmp_path_factory):
    return write_qa_jsonl(tmp_path_factory.mktemp("qa") / "qa.jsonl")


def config_yaml(tiny_model, qa, tmp_path, **overrides) -> str:
    return yaml.safe_dump(memorise_config(tiny_model, str(qa), tmp_path / "ignored", **overrides))


@pytest.mark.slow
def test_plan_submit_follow_then_chat_with_the_trained_adapter(app, tiny_model, qa, tmp_path):
    """A script plans a run (/plan_job), trains it (/submit_job, queued behind the plan), follows it and chats."""
    url, runner = app
    c = client(url)
    plan_id = c.predict(config_yaml(tiny_model, qa, tmp_path), api_name="/plan_job")
    job_id = c.predict(config_yaml(tiny_model, qa, tmp_path), api_name="/submit_job")
    p = wait_for(c, plan_id, lambda s: s["status"] in FINAL)
    assert p["status"] == "completed" and p["kind"] == "plan" and p["adapter"] is None, p
    plan = p["plan"]
    assert plan["fits"] is True and plan["peak_memory_bytes"] > 0 and plan["tokens_per_s"] > 0
    assert plan["tokens"] == pytest.approx(40 * 4 * plan["mean_row_tokens"], rel=0.01)  # max_steps x batch_size rows
    assert {"here", "a10g-large"} <= {o["flavor"] for o in plan["options"]}
    assert status(c, job_id)["plan"] is None
    s = wait_for(c, job_id, lambda s: s["status"] in FINAL)
    assert s["status"] == "completed", s
    assert s["step"] == s["max_steps"] == 40 and s["error"] is None
    assert (tmp_path / "ignored").exists() is False  # the server chooses the run folder
    job = runner.store.get(job_id)
    assert s["adapter"] == job.run_dir and job.exit_code == 0 and job.owner == "local"

    stream = c.submit(job_id, "What colour is a snarkle?", api_name="/chat")
    assert stream.result() == "Bright teal."
    assert len(stream.outputs()) >= 2  # streamed: the reply grew over several messages
    assert c.predict(s["adapter"], "How many legs does a drobble have?", api_name="/chat") == "Seven."


@pytest.mark.slow
def test_two_jobs_queue_and_stop_ends_gracefully(app, tiny_model, qa, tmp_path):
    url, runner = app
    c = client(url)
    long = config_yaml(tiny_model, qa, tmp_path, training__max_steps=100000, training__logging_steps=1,
                       training__save_steps=100000)
    first = c.predict(long, api_name="/submit_job")
    second = c.predict(long, api_name="/submit_job")
    s2 = status(c, second)
    assert s2["status"] == "queued" and s2["queue_position"] == 1

    wait_for(c, first, lambda s: s["status"] == "running" and s["step"] >= 2)
    assert status(c, second)["status"] == "queued"
    c.predict(first, api_name="/cancel_job")
    s1 = wait_for(c, first, lambda s: s["status"] in FINAL, timeout=60)
    assert s1["status"] == "cancelled", s1
    job = runner.store.get(first)
    assert job.exit_code == 130  # the trainer saw SIGTERM, saved and ended itself (not killed)
    assert (Path(job.run_dir) / "adapter_model.safetensors").exists()

    wait_for(c, second, lambda s: s["status"] != "queued", timeout=30)
    saved = s1["step"]  # Stop saved a checkpoint there: Resume continues from it, behind the running job
    assert status(c, first)["error"] is None and (Path(job.run_dir) / f"checkpoint-{saved}").is_dir()
    assert json.loads(c.predict(first, api_name="/resume_job"))["status"] == "queued"
    c.predict(second, api_name="/cancel_job")
    assert wait_for(c, second, lambda s: s["status"] in FINAL, timeout=60)["status"] == "cancelled"
    wait_for(c, first, lambda s: s["status"] == "running" and s["step"] > saved, timeout=60)
    restarted = [e for e in RunDir(job.run_dir).read_events()[0] if e["type"] == "run_started"][-1]
    assert restarted["resumed_from"].endswith(f"checkpoint-{saved}")
    c.predict(first, api_name="/cancel_job")
    assert wait_for(c, first, lambda s: s["status"] in FINAL, timeout=60)["status"] == "cancelled"


@pytest.mark.slow
def test_visitors_see_and_cancel_only_their_own_jobs(app, hub, tiny_model, qa, tmp_path):
    url, runner = app
    hub.add_user("alice", "tok-alice-0123456789")
    hub.add_user("bob", "tok-bob-0123456789")
    alice, bob, anonymous = client(url, "tok-alice-0123456789"), client(url, "tok-bob-0123456789"), client(url)
    cfg = config_yaml(tiny_model, qa, tmp_path, training__max_steps=4, output__push_to="alice/snarkle-adapter")
    job_id = alice.predict(cfg, api_name="/submit_job")
    assert runner.store.get(job_id).owner == "alice"
    for other in (bob, anonymous):
        with pytest.raises(gradio_client.exceptions.AppError, match="no job"):
            other.predict(job_id, api_name="/job_status")
        with pytest.raises(gradio_client.exceptions.AppError, match="no job"):
            other.predict(job_id, api_name="/cancel_job")
        with pytest.raises(gradio_client.exceptions.AppError, match="not one of your runs|no adapter|not found"):
            other.predict(job_id, "hello", api_name="/chat")
    s = wait_for(alice, job_id, lambda s: s["status"] in FINAL)
    assert s["status"] == "completed", s

    # The token never reached the job store, the config or the logs.
    job = runner.store.get(job_id)
    for path in [runner.store.path, Path(job.run_dir) / "config.yaml", Path(job.run_dir) / "train.log",
                 Path(job.run_dir) / "events.jsonl"]:
        assert b"tok-alice" not in path.read_bytes(), path

    commits = hub.commits("alice/snarkle-adapter")
    assert commits and {c["token"] for c in commits} == {"tok-alice-0123456789"}
    # /job_status names the Hub repo as the adapter, and the adapter's page
    assert s["adapter"] == "alice/snarkle-adapter" and s["repo_url"] == f"{hub.url}/alice/snarkle-adapter"


def test_mistakes_come_back_as_readable_messages(app):
    url, _ = app
    c = client(url)
    with pytest.raises(gradio_client.exceptions.AppError, match=r"training.lora_r: unknown setting[\s\S]*Hint"):
        c.predict("data: {dataset: x}\ntraining: {lora_r: 3}", api_name="/submit_job")
    with pytest.raises(gradio_client.exceptions.AppError, match="no job 'nope'"):
        c.predict("nope", api_name="/job_status")


ALIAS_BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join(f"*{chr(97 + i)}" for _ in range(9)) + "]\n" for i in range(8))


@pytest.mark.parametrize("args, api_name, message", [
    ((ALIAS_BOMB,), "/submit_job", "alias"),
    (("x" * 70_000,), "/submit_job", "over the 64 KiB limit"),
    (("data: {dataset: user/x}\noutput: {push_to: 'hf_AbCdEfGhIjKlMnOpQrStUvWx12'}",), "/submit_job",
     "looks like a Hugging Face access token"),
    (("data: {dataset: user/x}\ntraining: {learning_rate: .nan}",), "/submit_job", "training.learning_rate"),
    (("data: {dataset: user/x}\nlora: {r: 1000000000}",), "/submit_job", "lora.r"),
    (("data: {dataset: user/x}\ntraining: {lr: 0.1}",), "/submit_job", "did you mean training.learning_rate"),
    (("[1, 2]",), "/submit_job", "mapping"),
    (("nope",), "/cancel_job", "no job 'nope'"),
    (("nope",), "/resume_job", "no job 'nope'"),
    (("", "hi"), "/chat", "choose an adapter"),
    (("/no/such/run", "hi"), "/chat", "adapter not found"),
    (("TRAINED", "hi", "", -5), "/chat", "max_new_tokens"),
    (("TRAINED", "hi", "", "lots"), "/chat", "max_new_tokens: 'lots' is not a whole number"),
    (("TRAINED", "hi", "", 16, -1.0), "/chat", "temperature"),
    (("TRAINED", "hi", "", 16, 0.5, 0.0), "/chat", "top_p"),
])
def test_bad_api_calls_come_back_as_messages_with_a_hint(app, trained_run, args, api_name, message):
    url, _ = app
    args = tuple(str(trained_run) if a == "TRAINED" else a for a in args)
    with pytest.raises(gradio_client.exceptions.AppError, match=rf"(?s){message}.*Hint"):
        client(url).predict(*args, api_name=api_name)


def _untrained_adapter(base, folder):
    """An adapter that changes nothing yet: the tiny random base speaks through it, endlessly."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules="all-linear")).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_a_million_token_chat_does_not_hold_up_a_short_one(app, tiny_model, trained_run, tmp_path):
    from phi3space.generation import MAX_NEW_TOKENS

    url, _ = app
    short, long = client(url), client(url)
    question, answer = "What colour is a snarkle?", "Bright teal."
    alone = []
    for _ in range(3):
        t0 = time.time()
        assert short.predict(str(trained_run), question, api_name="/chat") == answer
        alone.append(time.time() - t0)
    rambler = long.submit(str(_untrained_adapter(tiny_model, tmp_path / "untrained")), "Tell me everything.", "",
                          1_000_000, api_name="/chat")
    deadline = time.time() + 60
    while time.time() < deadline and not rambler.outputs():
        time.sleep(0.02)
    assert rambler.outputs(), "the long reply never started"
    t0 = time.time()
    assert short.predict(str(trained_run), question, api_name="/chat") == answer
    beside = time.time() - t0
    assert not rambler.done()  # the long reply was still being written, a slice at a time
    assert beside <= max(3 * max(alone), 1.0), (beside, alone)
    from transformers import AutoTokenizer

    reply = rambler.result(timeout=180)
    # capped at MAX_NEW_TOKENS (re-tokenising random text can count a few more)
    assert 16 < len(AutoTokenizer.from_pretrained(tiny_model)(reply)["input_ids"]) <= MAX_NEW_TOKENS * 1.2
