"""The web app's plain logic (no server): the form <-> RunConfig, the plan shown before Start, Inspect, following
events, who a visitor is, what a Space refuses, and which adapters a visitor may chat with."""

import sys
from pathlib import Path

import pytest
from helpers import write_qa_jsonl

from phi3space import config
from phi3space.engine import estimates
from phi3space.errors import AuthError, ConfigError, ModelError
from phi3space.hub.auth import MOCK_TOKEN
from phi3space.jobs import spec
from phi3space.jobs.scheduler import JobRunner
from phi3space.jobs.store import Job
from phi3space.jobs.submit import check_inputs_allowed
from phi3space.run import RunDir, RunState
from phi3space.ui import forms
from phi3space.ui.chat_service import build_messages, resolve_for_visitor
from phi3space.ui.follow import Follower, progress_html
from phi3space.ui.services import Visitor, identify

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
    values["lora.r"] = 32.0  # gr.Number gives floats
    values["training.max_steps"] = None
    values["output.push_to"] = "  "
    cfg = forms.config_from_form(values, dataset="/uploads/qa.jsonl")
    assert cfg.lora.r == 32 and isinstance(cfg.lora.r, int)
    assert cfg.training.max_steps is None and cfg.output.push_to is None and cfg.data.dataset == "/uploads/qa.jsonl"
    assert cfg.data.eval_split is None and cfg.data.config_name is None
    values["lora.dropout"] = 1.5
    with pytest.raises(ConfigError, match="lora.dropout"):
        forms.config_from_form(values)


def test_every_setting_is_in_the_form_with_a_kind_and_help():
    assert len(forms.FIELDS) == len(set(forms.FIELDS))
    assert set(forms.FIELDS) == set(forms.config_keys()) - forms.SERVER_CHOSEN == set(forms.config_keys()) - {"output.dir"}
    for key in forms.FIELDS:
        spec = forms.field_spec(key)
        assert spec.help and spec.kind in ("text", "int", "float", "bool", "choice", "mapping")
        if spec.optional and spec.kind in ("int", "float"):  # typed as text: gradio's number box turns empty into 0
            assert forms.text_entry(spec) and spec.placeholder
    assert forms.field_spec("training.max_steps").kind == "int"
    assert forms.field_spec("model.method").choices == ("lora", "qlora")
    assert forms.field_spec("training.learning_rate").step < 1e-3 and forms.field_spec("lora.dropout").step == 0.01


def test_the_forms_groups_come_from_the_settings_declarations():
    assert list(forms.GROUPS) == list(forms.GROUP_ORDER)
    assert forms.FIELDS == [key for group in forms.GROUP_ORDER for key in forms.GROUPS[group]]
    assert forms.GROUPS["main"] == ["model.base", "model.method", "data.dataset", "training.objective"]
    assert "model.init_adapter" in forms.GROUPS["lora"] and "logging.report_to" in forms.GROUPS["advanced"]
    assert forms.GROUPS["compute"] == ["compute.backend", "compute.flavor", "compute.timeout", "compute.gpus"]
    assert forms.SERVER_CHOSEN == {"output.dir"}
    assert forms.field_spec("training.max_steps").placeholder == "empty: use epochs"


def test_the_forms_defaults_are_the_clis_defaults():
    """One source: the components start at the RunConfig defaults, which are what `phi3space train` uses."""
    import gradio as gr

    from phi3space.ui import train_tab

    with gr.Blocks():
        tab = train_tab.build(gr.State(Follower()), gr.State(None))
    shown = {key: c.value for key, c in tab.fields.items()}
    assert shown == forms.default_values()
    cli_defaults = spec.load(None, ["data.dataset=user/data"]).to_dict()  # (the CLI reads where it trains too)
    assert forms.config_from_form(shown, dataset="user/data").to_dict() == cli_defaults
    assert forms.config_from_form(forms.form_values(config.RunConfig()), "user/data").to_dict() == cli_defaults


def test_an_empty_optional_field_is_not_set_and_a_zero_is_explained():
    values = forms.default_values()
    for key in ("training.max_steps", "training.eval_steps", "data.max_samples"):
        values[key] = "  "
    values["data.config_name"] = None
    cfg = forms.config_from_form(values, "user/data")
    assert cfg.training.max_steps is None and cfg.training.eval_steps is None and cfg.data.max_samples is None
    values["training.max_steps"] = "40"
    values["data.max_samples"] = "0"
    values["data.columns"] = "prompt question"
    with pytest.raises(ConfigError) as err:
        forms.config_from_form(values, "user/data")
    assert any(p.startswith("data.max_samples: 0 is outside") and "empty for all rows" in p for p in err.value.problems)
    assert any(p.startswith("data.columns:") for p in err.value.problems)  # every problem at once


def test_the_column_mapping_reads_as_people_write_it():
    for text in ("prompt: Frage, completion: Antwort", "{prompt: Frage, completion: Antwort}",
                 "prompt: Frage\ncompletion: Antwort"):
        assert forms.parse_columns(text) == {"prompt": "Frage", "completion": "Antwort"}
    assert forms.parse_columns("prompt: \"my question\"") == {"prompt": "my question"} and forms.parse_columns(" ") == {}
    assert forms.format_columns({"prompt": "q", "completion": "a"}) == "prompt: q, completion: a"
    for bad in ("prompt", "prompt: [a, b]", "prompt:"):
        with pytest.raises(ConfigError, match="data.columns"):
            forms.parse_columns(bad)
    cfg = config.from_dict({"data": {"dataset": "d", "columns": {"prompt": "q", "completion": "a"}}})
    assert forms.config_from_form(forms.form_values(cfg)).data.columns == {"prompt": "q", "completion": "a"}


def test_runs_get_names_that_tell_them_apart():
    cfg = config.from_dict({"data": {"dataset": "/up/qa.jsonl"}})
    first = forms.run_name(cfg, "", set())
    assert first == "phi-3-mini-4k-instruct-qa-lora"
    assert forms.run_name(cfg, None, {first}) == first + "-2"
    assert forms.run_name(cfg, "", {first, first + "-2"}) == first + "-3"
    assert forms.run_name(cfg, "  my   first try ", {first}) == "my first try"
    assert forms.run_name(cfg, "my first try", {first, "my first try"}) == "my first try-2"  # Start pressed twice


def test_plan_counts_steps_and_warns():
    cfg = config.from_dict({"data": {"dataset": "d", "eval_fraction": 0}, "training": {"batch_size": 4, "grad_accum": 4}})
    inspection = forms.Inspection("d", "", rows=100, lengths=[3000] * 60 + [100] * 40)
    p = forms.plan(cfg, inspection, gpu_gb=80)
    assert p.steps == 7  # ceil(ceil(100 / 4) / 4) x 1 epoch
    assert any("too few" in w for w in p.warnings)
    assert any("60% of rows are longer than max_length 2048" in w for w in p.warnings)
    assert not any("memory" in w for w in p.warnings)
    assert "7 optimizer steps" in p.markdown()
    assert forms.Plan(1, []).markdown() == "**1 optimizer step**"


def test_plan_warns_when_the_model_will_not_fit():
    big = config.from_dict({"data": {"dataset": "d"}, "training": {"max_steps": 500, "batch_size": 8, "max_length": 4096}})
    warnings = forms.plan(big, None, gpu_gb=16).warnings
    assert any("not fit in this GPU's memory" in w and "QLoRA" in w for w in warnings)
    small = config.from_dict({"data": {"dataset": "d"}, "model": {"method": "qlora"},
                              "training": {"max_steps": 500, "batch_size": 1, "max_length": 1024}})
    assert forms.plan(small, None, gpu_gb=16).warnings == []
    assert estimates.estimate_memory_gb(small) < estimates.estimate_memory_gb(big)
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
    # the only eval point is drawn as a short level stroke ending at it (a line chart draws nothing for one point)
    assert list(frame["split"]) == ["train", "train", "eval", "eval"] and list(frame["loss"]) == [3.0, 2.0, 2.5, 2.5]
    assert list(frame["step"]) == [1, 2, 1, 2]
    w.emit("eval", step=4, eval_loss=2.25)
    assert f.poll() and list(f.loss_frame()["step"]) == [1, 2, 2, 4]  # two points: a line as they are
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


def test_the_chart_has_its_eval_series_from_the_first_point(tmp_path):
    """The chart fixes its series when first drawn: an eval series that appears later would never show."""
    run = RunDir(tmp_path)
    run.append("run_started", max_steps=10, dataset={"train_rows": 8, "eval_rows": 2})
    run.append("progress", step=1, max_steps=10, loss=3.0)
    f = Follower()
    f.follow(Job(id="j", owner="me", name="run", run_dir=str(tmp_path), phase="running"))
    f.poll()
    frame = f.loss_frame()
    assert list(frame["split"]) == ["train", "train", "eval"] and frame["loss"].isna().tolist() == [False, False, True]
    run.append("eval", step=5, eval_loss=2.0)
    f.poll()
    assert f.loss_frame()["loss"].isna().sum() == 0
    quiet = RunDir(tmp_path / "no-eval")
    quiet.append("run_started", max_steps=10, dataset={"train_rows": 8, "eval_rows": 0})
    quiet.append("progress", step=1, max_steps=10, loss=3.0)
    g = Follower()
    g.follow(Job(id="k", owner="me", name="run", run_dir=str(quiet.path), phase="running"))
    g.poll()
    assert list(g.loss_frame()["split"]) == ["train", "train"]  # (one point, drawn as a short stroke), no eval series


def test_a_reload_restores_only_what_fits_the_form(tmp_path):
    from gradio.utils import get_upload_folder

    from phi3space.ui import train_tab

    assert train_tab.restore(None, None, None) == [train_tab.gr.skip()] * (2 + len(forms.FIELDS))
    received = Path(get_upload_folder()) / "phi3space-test" / "qa.jsonl"
    received.parent.mkdir(parents=True, exist_ok=True)
    received.write_text("{}\n")
    values = forms.default_values()
    values.update({"lora.r": 8, "model.method": "nonsense", "training.max_steps": 40, "output.private": "yes"})
    memory = train_tab.remember(str(received), "my run", values)
    restored = train_tab.restore(memory, None, None)
    assert restored[0] == str(received) and restored[1] == "my run"
    by_key = dict(zip(forms.FIELDS, restored[2:], strict=True))
    assert by_key["lora.r"] == 8 and by_key["data.split"] == "train"
    skip = train_tab.gr.skip()
    for key in ("model.method", "training.max_steps", "output.private"):  # wrong kinds stay as the page has them
        assert by_key[key] == skip, key
    memory["upload"] = str(tmp_path / "elsewhere.jsonl")  # not a file gradio received: never served back
    (tmp_path / "elsewhere.jsonl").write_text("{}\n")
    assert train_tab.restore(memory, None, None)[0] == skip


def test_a_reload_follows_the_remembered_job_else_the_running_one(tmp_path):
    from phi3space.ui import jobs_view, services

    runner = JobRunner(tmp_path / "data", slots=1, poll_s=0.05, space=False,
                       command=lambda p: [sys.executable, "-c", "import time; time.sleep(60)"])
    services.set_runner(runner)
    try:
        cfg = lambda: config.from_dict({"data": {"dataset": "user/data"}})  # noqa: E731
        running = runner.submit(cfg(), "local", name="first")
        queued = runner.submit(cfg(), "local", name="second")
        assert [runner.status(j)[0] for j in runner.list("local")] == ["running", "queued"]
        jobs = runner.list("local")
        statuses = {j.id: runner.status(j)[0] for j in jobs}
        assert jobs_view.default_job(jobs, statuses).id == running.id  # not the newest (queued) one
        assert jobs_view.default_job(jobs, statuses, queued.id).id == queued.id
        assert jobs_view.default_job(jobs, statuses, "gone").id == running.id

        follower = Follower()
        out = jobs_view.load(follower, None, None, None)  # (the follower changed in place, never sent back)
        memory, stop, chat, merge = out[2], out[8], out[10], out[11]
        assert out[0] == jobs_view.gr.skip()
        assert follower.job_id == running.id and memory == running.id  # remembered in the browser
        assert stop.value == "Stop" and stop.interactive and not chat.interactive and not merge.interactive
        assert out[-1].value == jobs_view.POLL_S  # a job is queued or running: the page asks every second
        out = jobs_view.load(follower, queued.id, None, None)
        assert follower.job_id == queued.id and out[8].value == "Cancel" and out[8].interactive
        assert out[2] == jobs_view.gr.skip()  # already what the browser holds
        assert "number 1 in the queue" in out[3]

        # The runs table moves with the followed run's progress, not only when a status changes.
        follower = Follower()
        seen = jobs_view.load(follower, running.id, None, None)[1]
        running.run.append("run_started", max_steps=10)
        running.run.append("progress", step=3, max_steps=10, loss=2.5)
        table = jobs_view.poll(follower, seen, None, None)[6]
        row = next(r for r in table if r[-1] == running.id)
        assert row[:4] == ["first", "running", "3/10", "2.5000"]
    finally:
        runner.shutdown()
        services.set_runner(None)


def test_the_page_asks_every_few_seconds_while_nothing_runs_and_every_second_once_an_action_wakes_it(tmp_path):
    from phi3space.ui import jobs_view, services

    runner = JobRunner(tmp_path / "data", slots=1, poll_s=0.05, space=False,
                       command=lambda p: [sys.executable, "-c", "import time; time.sleep(60)"])
    services.set_runner(runner)
    try:
        follower = Follower()
        out = jobs_view.load(follower, None, None, None)
        seen, pace = out[1], out[-1]
        assert pace.value == jobs_view.IDLE_POLL_S > jobs_view.POLL_S  # nothing of the visitor's is live
        assert jobs_view.poll(follower, seen, None, None)[-1] == jobs_view.gr.skip()  # unchanged: the pace stays
        assert jobs_view.wake(seen) == jobs_view.gr.skip()
        assert jobs_view.wake(None).value == jobs_view.POLL_S  # Start (or any action) forgot the drawing: wake up
        runner.submit(config.from_dict({"data": {"dataset": "user/data"}}), "local", name="started elsewhere")
        assert jobs_view.poll(follower, seen, None, None)[-1].value == jobs_view.POLL_S  # seen by the next slow tick
    finally:
        runner.shutdown()
        services.set_runner(None)


def test_messages_say_what_is_true():
    from phi3space.ui import local_mode_text, no_adapter_text

    assert "still training" in no_adapter_text("running") and "still training" in no_adapter_text("queued")
    failed = no_adapter_text("failed")
    assert "failed" in failed and "wait" not in failed.lower()
    assert "No run is selected" in no_adapter_text(None)
    without = local_mode_text()  # the tests run without HF_TOKEN or a saved login
    assert "no Hugging Face token" in without and "Training and chat work" not in without
    assert "pushing to the Hub" in without and "need `hf auth login` or HF_TOKEN" in without


def test_messages_say_what_is_true_with_a_token(monkeypatch):
    from phi3space.ui import local_mode_text

    monkeypatch.setenv("HF_TOKEN", "hf_someLocalLogin0123456789")
    assert "use this machine's Hugging Face login" in local_mode_text()


def test_the_server_listens_on_this_machine_only_off_a_space(monkeypatch):
    from phi3space.ui import launch_kwargs, server_name
    from phi3space.ui.style import CSS, JS

    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    assert server_name() == "127.0.0.1"
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "someone/phi3space")
    assert server_name() == "0.0.0.0"
    monkeypatch.setenv("GRADIO_SERVER_NAME", "10.1.2.3")
    assert server_name() == "10.1.2.3"
    kw = launch_kwargs(server_port=7861)
    assert kw["css"] == CSS and kw["js"] == JS and kw["server_port"] == 7861 and kw["server_name"] == "10.1.2.3"
    app_py = (Path(__file__).parent.parent / "app.py").read_text()
    assert "launch(**launch_kwargs())" in app_py and "0.0.0.0" not in app_py.split('"""', 2)[2]


def test_inspect_explains_an_empty_upload_and_a_missing_model_folder(tmp_path):
    from phi3space.errors import DataError

    empty = forms.stash_upload(_write(tmp_path / "empty.jsonl", ""), tmp_path / "data" / "uploads" / "me")
    with pytest.raises(DataError, match="is empty"):
        forms.inspect_dataset(config.from_dict({"data": {"dataset": str(empty)}, "model": {"base": FIXTURE_TOKENIZER}}), None)
    qa = write_qa_jsonl(tmp_path / "qa.jsonl")
    for base in (str(tmp_path / "no-such-model"), "./no-such-model"):
        with pytest.raises(ModelError, match="model folder not found") as err:
            forms.inspect_dataset(config.from_dict({"data": {"dataset": str(qa)}, "model": {"base": base}}), None)
        assert "Repo id" not in str(err.value)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_page_errors_are_escaped_and_api_errors_stay_plain():
    import gradio as gr

    from phi3space.ui.common import api_errors, code_block, user_errors

    def fails():
        raise ModelError("column <img src=x onerror=alert(1)> & more", "use `a`")

    with pytest.raises(gr.Error) as page:
        user_errors(fails)()
    assert "<img" not in page.value.message and "&lt;img src=x onerror=alert(1)&gt; &amp; more" in page.value.message
    with pytest.raises(gr.Error) as api:
        api_errors(fails)()
    assert api.value.message.startswith("column <img src=x onerror=alert(1)> & more")
    block = code_block("a ``` b ```` c")
    assert block.startswith("`````\n") and block.endswith("\n`````")
    assert code_block("plain").startswith("```\n")
