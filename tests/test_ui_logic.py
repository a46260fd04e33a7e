"""The web app's plain logic (no server): the form <-> RunConfig, the plan shown before Start, Inspect, following
events, who a visitor is, what a Space refuses, and which adapters a visitor may chat with."""

import sys
from pathlib import Path

import pytest
from conftest import write_qa_jsonl

from phi3space import config, modeling
from phi3space.errors import AuthError, ConfigError, ModelError
from phi3space.hub import MOCK_TOKEN
from phi3space.jobs import Job, JobRunner
from phi3space.run import RunDir, RunState
from phi3space.ui import forms
from phi3space.ui.chat_service import build_messages, resolve_for_visitor
from phi3space.ui.follow import Follower, progress_html
from phi3space.ui.services import Visitor, check_inputs_allowed, identify

FIXTURE_TOKENIZER = str(Path(__file__).parent / "fixtures" / "phi3-mini-4k-instruct")


class Profile:
    def __init__(self, username):
        self.username = username


class Token:
    def __init__(self, token):
        self.token = token


def test_form_round_trips_a_config():
    cfg = config.from_dict({"data": {"dataset": "user/data", "config_name": "en", "eval_split": "test"},
                            "lora": {"r": 8, "target_modules": ["qkv_proj", "o_proj"]}, "training": {"max_steps": 30},
                            "output": {"push_to": "me/x", "private": False, "push_checkpoints": True}})
    values = forms.form_values(cfg)
    assert len(values) == len(forms.FIELDS)
    again = forms.config_from_form(values)
    assert again.data == cfg.data and again.output.push_checkpoints is True
    assert again.lora.r == 8 and again.lora.target_modules == ["qkv_proj", "o_proj"]
    assert again.training.max_steps == 30 and again.output.push_to == "me/x" and again.output.private is False


def test_form_numbers_and_empty_optionals():
    values = forms.form_values(config.from_dict({"data": {"dataset": "user/data"}}))
    values[forms.FIELDS.index("lora.r")] = 32.0  # gr.Number gives floats
    values[forms.FIELDS.index("training.max_steps")] = None
    values[forms.FIELDS.index("output.push_to")] = "  "
    cfg = forms.config_from_form(values, dataset="/uploads/qa.jsonl")
    assert cfg.lora.r == 32 and isinstance(cfg.lora.r, int)
    assert cfg.training.max_steps is None and cfg.output.push_to is None and cfg.data.dataset == "/uploads/qa.jsonl"
    assert cfg.data.eval_split is None and cfg.data.config_name is None
    values[forms.FIELDS.index("lora.dropout")] = 1.5
    with pytest.raises(ConfigError, match="lora.dropout"):
        forms.config_from_form(values)


def test_every_form_field_has_a_kind_and_help():
    for key in forms.FIELDS:
        spec = forms.field_spec(key)
        assert spec.help and spec.kind in ("text", "int", "float", "bool", "choice")
    assert forms.field_spec("training.max_steps").kind == "int"
    assert forms.field_spec("model.method").choices == ("lora", "qlora")


def test_plan_counts_steps_and_warns():
    cfg = config.from_dict({"data": {"dataset": "d", "eval_fraction": 0}, "training": {"batch_size": 4, "grad_accum": 4}})
    inspection = forms.Inspection("d", "", rows=100, lengths=[3000] * 60 + [100] * 40)
    p = forms.plan(cfg, inspection, gpu_gb=80)
    assert p.steps == 7  # ceil(ceil(100 / 4) / 4) x 1 epoch
    assert any("too few" in w for w in p.warnings)
    assert any("60% of rows are longer than max_length 2048" in w for w in p.warnings)
    assert not any("memory" in w for w in p.warnings)
    assert "7 optimizer steps" in p.markdown()


def test_plan_warns_when_the_model_will_not_fit():
    big = config.from_dict({"data": {"dataset": "d"}, "training": {"max_steps": 500, "batch_size": 8, "max_length": 4096}})
    warnings = forms.plan(big, None, gpu_gb=16).warnings
    assert any("not fit in this GPU's memory" in w and "QLoRA" in w for w in warnings)
    small = config.from_dict({"data": {"dataset": "d"}, "model": {"method": "qlora"},
                              "training": {"max_steps": 500, "batch_size": 1, "max_length": 1024}})
    assert forms.plan(small, None, gpu_gb=16).warnings == []
    assert modeling.estimate_memory_gb(small) < modeling.estimate_memory_gb(big)
    assert any("no GPU" in w for w in forms.plan(small, None, gpu_gb=None).warnings)


def test_plan_for_a_tiny_local_model_on_cpu_has_no_gpu_warning(tiny_model):
    cfg = config.from_dict({"data": {"dataset": "d"}, "model": {"base": str(tiny_model)}, "training": {"max_steps": 40}})
    assert forms.plan(cfg, None, gpu_gb=None).warnings == []


def test_inspect_shows_format_rows_and_the_trained_span(tmp_path):
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    with data.open("a") as fh:
        fh.write('{"messages": [{"role": "user", "content": "no answer"}]}\n')
    cfg = config.from_dict({"data": {"dataset": str(data), "eval_fraction": 0}, "model": {"base": FIXTURE_TOKENIZER}})
    found = forms.inspect_dataset(cfg, None)
    assert "format: messages" in found.text and "dropped 1: no assistant turn" in found.text
    assert found.rows == 4 and len(found.lengths) == 4
    trained = "".join(t for t, label in found.segments if label == "trained")
    assert "." in trained and "<|user|>" not in trained
    assert found.histogram()["rows"].sum() == 4


def test_follower_reads_only_new_events(tmp_path):
    w = RunDir(tmp_path).writer()
    w.emit("run_started", max_steps=4)
    w.emit("progress", step=1, max_steps=4, loss=3.0, eta_s=30)
    f = Follower()
    job = Job(id="j", owner="me", name="run", run_dir=str(tmp_path), phase="running")
    assert f.follow(job) and not f.follow(job)
    assert f.poll() and not f.poll()
    w.emit("progress", step=2, max_steps=4, loss=2.0, eta_s=20)
    w.emit("eval", step=2, eval_loss=2.5)
    assert f.poll()
    frame = f.loss_frame()
    assert list(frame["split"]) == ["train", "train", "eval"] and list(frame["loss"]) == [3.0, 2.0, 2.5]
    assert "step 2/4" in f.log_text()
    html = progress_html(job, "running", f.state, None)
    assert "step 2/4" in html and "ETA 0:20" in html and 'value="2" max="4"' in html
    assert "number 2 in the queue" in progress_html(Job(id="q", owner="me", name="q", run_dir="x"), "queued", RunState(), 2)
    failed = Job(id="f", owner="me", name="f", run_dir="x", phase="done")
    state = RunState(status="failed",
                     error={"kind": "data", "message": "data file not found: <img src=x onerror=alert(1)>", "hint": "a & b"})
    html = progress_html(failed, "failed", state, None)
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html and "a &amp; b" in html


def test_identity(monkeypatch):
    assert identify(Profile("alice"), Token("hf_abcdefgh12345"), space=True) == Visitor("alice", "hf_abcdefgh12345")
    assert identify(None, Token(MOCK_TOKEN), space=False) == Visitor("local", None)  # the mock is not a token
    monkeypatch.setenv("HF_TOKEN", "hf_localLogin0123456789")
    assert Visitor("local", None).hub_token(space=False) == "hf_localLogin0123456789"  # off a Space: your login
    assert Visitor(None, None).hub_token(space=True) is None  # on a Space: never the owner's
    assert Visitor("alice", "hf_alice0123456789").hub_token(space=True) == "hf_alice0123456789"
    assert identify(Profile("me"), Token(MOCK_TOKEN), space=False) == Visitor("me", None)
    assert identify(None, None, space=True).owner is None
    with pytest.raises(AuthError, match="sign in"):
        identify(None, None, space=True).require_owner()


def test_identity_from_an_api_token(hub):
    hub.add_user("carol", "tok-carol-123456789")
    assert identify(None, Token("tok-carol-123456789"), space=True) == Visitor("carol", "tok-carol-123456789")
    with pytest.raises(AuthError, match="did not accept"):
        identify(None, Token("tok-nobody-123456789"), space=True)


def test_a_space_refuses_server_paths_but_not_uploads_or_hub_ids(tmp_path):
    uploads = tmp_path / "uploads"
    (uploads / "me").mkdir(parents=True)
    ok = {"data.dataset": str(uploads / "me" / "qa.jsonl"), "model.base": "microsoft/Phi-3-mini-4k-instruct"}
    check_inputs_allowed(ok, (uploads,), space=True)
    with pytest.raises(ConfigError, match="path on the server") as err:
        check_inputs_allowed({"data.dataset": "/etc/passwd", "model.base": "../models/x"}, (uploads,), space=True)
    assert len(err.value.problems) == 2
    check_inputs_allowed({"data.dataset": "/etc/passwd"}, (uploads,), space=False)


def test_chat_adapters_are_the_visitors_own(tmp_path):
    trained_run = tmp_path / "elsewhere"
    trained_run.mkdir()
    (trained_run / "adapter_config.json").write_text("{}")
    runner = JobRunner(tmp_path / "data", space=False, command=lambda p: [sys.executable, "-c", "pass"])
    try:
        run = RunDir(runner.root / "runs" / "alice" / "j1")
        run.path.mkdir(parents=True)
        run.adapter_config.write_text("{}")
        run.adapter_weights.write_bytes(b"weights")
        run.append("run_finished", status="completed", step=4, adapter=str(run.path))
        run_dir = run.path
        runner.store.add(Job(id="j1", owner="alice", name="n", run_dir=str(run_dir), phase="done"))
        alice, bob = Visitor("alice", None), Visitor("bob", None)
        assert resolve_for_visitor("j1", alice, runner, space=True) == run_dir
        assert resolve_for_visitor(str(run_dir), alice, runner, space=True) == run_dir
        for ref in ("j1", str(run_dir)):
            with pytest.raises(ModelError):
                resolve_for_visitor(ref, bob, runner, space=False)
        with pytest.raises(ModelError, match="not one of your runs"):
            resolve_for_visitor(str(trained_run), bob, runner, space=True)
        assert resolve_for_visitor(str(trained_run), bob, runner, space=False) == trained_run  # local use
    finally:
        runner.shutdown()


def test_chat_messages():
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "text", "text": "yo"}]}]
    assert build_messages(history, "next", "be brief") == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"}, {"role": "user", "content": "next"}]


def test_error_pop_ups_show_dataset_text_as_text():
    from phi3space.errors import DataError
    from phi3space.ui.common import as_gr_error

    err = as_gr_error(DataError("columns: <img src=x onerror=alert(1)>, q", "map 'q' & friends"))
    assert "<img" not in err.message and "&lt;img src=x onerror=alert(1)&gt;" in err.message
    assert "map 'q' &amp; friends" in err.message  # quotes stay readable for API clients
