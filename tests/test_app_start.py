"""Start on the page: it checks what Inspect checks and refuses at once (nothing queued), says an unreachable Hub
without the retries, and a name used before gets a number. The demo's settings (phi3space.demo) are the form's
start off a Space without a GPU, and they validate."""

import sys
import time

import gradio as gr
import pytest
from helpers import FIXTURE

from phi3space import config, demo
from phi3space.jobs.followups import Evaluate
from phi3space.jobs.scheduler import JobRunner
from phi3space.ui import forms, services, train_tab
from phi3space.ui.follow import Follower


@pytest.fixture
def runner(tmp_path):
    runner = JobRunner(tmp_path / "data", slots=1, space=False, command=lambda p: [sys.executable, "-c", "import time; time.sleep(60)"])
    services.set_runner(runner)
    yield runner
    runner.shutdown()
    services.set_runner(None)


def form(**settings) -> dict:
    values = forms.default_values()
    values.update({key.replace("__", "."): value for key, value in settings.items()})
    return values


def listed(values: dict) -> list:
    """The form's values as gradio hands them to a handler: in the order of its components (forms.FIELDS)."""
    return [values[key] for key in forms.FIELDS]


def start(values, run_name=""):
    return train_tab.start(None, None, Follower(), None, run_name, *listed(values))


def test_start_refuses_at_once_what_inspect_refuses(runner, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"messages": [{"role": "user", "content": "no answer"}]}\n')
    values = form(data__dataset=str(empty), model__base=str(FIXTURE))
    with pytest.raises(gr.Error) as inspected:
        train_tab.inspect_click(None, None, None, "", *listed(values))
    with pytest.raises(gr.Error) as started:
        start(values)
    assert started.value.message == inspected.value.message and "no usable rows" in started.value.message.lower()
    assert runner.list("local") == []


def test_an_unreachable_hub_is_said_at_start_without_retries(runner, hub, monkeypatch):
    monkeypatch.setenv("PHI3SPACE_RETRY_BASE_S", "30")  # were the retries taken, this test would take minutes
    hub.down = True
    try:
        with pytest.raises(gr.Error, match="cannot be reached"):
            start(form(data__dataset="alice/qa", model__base=str(FIXTURE)))
    finally:
        hub.down = False
    assert runner.list("local") == []


def test_a_run_name_used_before_gets_a_number(runner, qa_file):
    values = form(data__dataset=str(qa_file), model__base=str(FIXTURE))
    start(values, "my run")
    start(values, "my run")
    assert [j.name for j in runner.list("local")] == ["my run", "my run-2"]


def test_the_demo_is_the_start_off_a_space_without_a_gpu_and_its_settings_validate(tmp_path, monkeypatch):
    monkeypatch.delenv(demo.ENV, raising=False)
    assert demo.wanted(space=False, gpus=0) and not demo.wanted(space=False, gpus=1) and not demo.wanted(True, 0)
    monkeypatch.setenv(demo.ENV, "0")
    assert not demo.wanted(space=False, gpus=0)
    monkeypatch.setenv(demo.ENV, "1")
    assert demo.wanted(space=True, gpus=8)
    start = demo.settings(tmp_path)
    cfg = forms.config_from_form(form(**{k.replace(".", "__"): v for k, v in start.items()}))
    assert (cfg.model.base, cfg.data.dataset, cfg.data.eval_split) == (str(tmp_path / "demo" / "phi3-tiny-demo"),
                                                                       str(demo.DATASET), "test")
    assert config.default_run_name(cfg) == "phi3-tiny-demo-vellmora-lora"
    rows = (demo.DATASET / "train.jsonl").read_text().splitlines()
    assert len(rows) == 32 and all(line in rows for line in (demo.DATASET / "test.jsonl").read_text().splitlines())
    assert (demo.HERE / "tokenizer" / "LICENSE").read_text().strip().startswith("MIT License")


def test_inspect_names_an_upload_by_its_own_name_not_the_servers_copy(runner, qa_file):
    values = form(model__base=str(FIXTURE), data__eval_fraction=0)
    report = train_tab.inspect_click(None, None, str(qa_file), "", *listed(values))[0]
    assert "qa.jsonl (uploaded)" in report and str(runner.root) not in report


def test_the_plan_warns_of_a_batch_larger_than_the_rows_and_counts_one_step_right():
    cfg = forms.config_from_form(form(data__dataset="user/data", training__batch_size=8, training__grad_accum=1))
    plan = forms.plan(cfg, forms.Inspection("user/data", "", rows=4, lengths=[10] * 4), gpu_gb=80)
    assert plan.steps == 1 and "**1 optimizer step**" in plan.markdown()
    assert any(w.startswith("only 1 step:") for w in plan.warnings)
    assert any("batch size 8 is more than the 4 training rows" in w and "to 2 or less" in w for w in plan.warnings)


LINGERS = """
import sys, time
from pathlib import Path
from phi3space.run import RunDir
run = RunDir(Path(sys.argv[1]).parent)
run.adapter_weights.write_bytes(b"weights")
run.adapter_config.write_text("{}")
run.append("run_started", max_steps=4)
run.finish("completed", step=4, adapter=str(run.path))
Path(sys.argv[2]).touch()
time.sleep(300)  # a process that takes its time to exit after its last word
"""


def test_the_page_and_its_actions_follow_a_runs_last_event_while_its_process_exits(tmp_path):
    from phi3space.ui import jobs_view

    said = tmp_path / "said"
    runner = JobRunner(tmp_path / "data", slots=1, space=False, poll_s=0.05,
                       command=lambda p: [sys.executable, "-c", LINGERS, str(p), str(said)])
    services.set_runner(runner)
    try:
        job = runner.submit(config.from_dict({"data": {"dataset": "user/data"}}), "local", name="lingers")
        for _ in range(600):  # until the run has said its last word (not a timed assertion: the next lines are)
            if said.exists():
                break
            time.sleep(0.1)
        assert runner.status(runner.get(job.id, "local"))[0] == "running"  # the process lives on
        assert services.run_status(runner.get(job.id, "local"))[0] == "completed"  # the page goes by the event
        follower = Follower()
        out = jobs_view.load(follower, job.id, None, None)
        stop, chat, merge, note = out[8], out[10], out[11], out[-2]
        assert "completed" in out[3] and not stop.interactive and chat.interactive and merge.interactive
        assert note == f"Evaluate, Export, Merge and Chat act on **lingers** ({job.id})."
        evaluation = runner.submit(Evaluate(job.id), "local")  # accepted: the adapter is there
        assert evaluation.kind == "eval" and evaluation.name == "lingers-eval"
    finally:
        runner.shutdown()
        services.set_runner(None)
