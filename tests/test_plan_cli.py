"""``python -m phi3space plan CONFIG``: the measured plan (phi3space.jobs.plan) from a terminal: the config loaded as
``train`` loads it, the stages on stderr as they happen, the plan on stdout (as JSON with --json, else lines to
read), and a mistake as a message and a hint with status 2."""

import json

import pytest
from helpers import memorise_config, run_cli, write_config, write_qa_jsonl

from phi3space.report import plan_lines as lines


@pytest.mark.slow
def test_plan_json_measures_the_tiny_model_here_and_prices_each_flavor(tiny_model, tmp_path, hub):
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    path = write_config(tmp_path / "run.yaml", memorise_config(tiny_model, str(data), tmp_path / "run"))
    done = run_cli("plan", str(path), "--set", "training.max_steps=20", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "plan: reading and measuring the training rows" in done.stderr and "plan: probing 6 steps" in done.stderr
    plan = json.loads(done.stdout)
    assert plan["peak_memory_bytes"] > 0 and plan["tokens_per_s"] > 0 and plan["fits"] is True
    assert plan["eta_s"] > 0 and plan["tokens"] == pytest.approx(20 * 4 * plan["mean_row_tokens"], rel=0.01)
    here, *elsewhere = plan["options"]
    assert here["flavor"] == "here" and here["cost_usd"] is None and here["eta_s"] > 0
    assert elsewhere and all(o["flavor"] and o["eta_s"] > 0 and o["cost_usd"] > 0 for o in elsewhere)
    assert not (tmp_path / "run").exists()  # the probe kept nothing of the run's


def test_plan_of_a_config_that_is_not_there_says_so_without_a_traceback(tmp_path):
    done = run_cli("plan", str(tmp_path / "missing.yaml"))
    assert done.returncode == 2 and "error:" in done.stderr and "hint:" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_the_readable_plan_says_what_fits_and_lists_where_it_could_run():
    option = {"flavor": "here", "hardware": "CPU", "eta_s": 95, "cost_usd": None, "fits": False, "error": 0.25}
    plan = {"hardware": "CPU", "probe_steps": 6, "rows": 4, "mean_row_tokens": 40.0, "longest_row_tokens": 52,
            "peak_memory_bytes": 3e9, "memory_available_bytes": 2e9, "memory_source": "cgroup limit",
            "tokens_per_s": 100.0, "fits": False, "eta_s": 95, "tokens": 6400,
            "settings_that_fit": {"training.batch_size": 2, "training.grad_accum": 2},
            "probes": [{"problem": None}, {"problem": None}],
            "options": [option, {**option, "flavor": "a10g-large", "hardware": "a10g-large · 1× A10G 24 GB",
                                 "eta_s": 30, "cost_usd": 0.01, "fits": True, "error": 0.5}]}
    text = "\n".join(lines(plan))
    assert "peak memory: 3.00 GB of 2.00 GB available (cgroup limit)" in text and "speed: 100.0 tokens/s" in text
    assert "fits here: no" in text
    assert "it fits with: --set training.batch_size=2 --set training.grad_accum=2" in text
    here, a10g = text.splitlines()[-2:]
    assert here.split()[:5] == ["here", "1:35", "-", "no", "±25%"]
    assert a10g.split()[:5] == ["a10g-large", "0:30", "$0.01", "yes", "±50%"]
    plan.update(fits=True, settings_that_fit={})
    assert "fits here: yes; the whole run (6,400 tokens) about 1:35" in "\n".join(lines(plan))
