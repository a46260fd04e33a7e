"""The measured plan (phi3space.jobs.plan): a probe of the real training on the run's own rows, here, and what
it says about fitting, time and price here and on each Jobs flavor (the flavors and prices of the Jobs stand-in,
which copies the Hub's documented list)."""

import pytest
from helpers import memorise_config, wait_job, write_qa_jsonl

from phi3space import config
from phi3space.jobs.kinds import PLAN
from phi3space.jobs.plan import make_plan, remedies
from phi3space.jobs.scheduler import JobRunner


def _cfg(tiny_model, tmp_path, **overrides):
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    return config.from_dict(memorise_config(tiny_model, str(data), tmp_path / "run", **overrides))


def test_remedies_keep_the_effective_batch_and_end_with_checkpointing_and_qlora_on_a_gpu(tiny_model, tmp_path):
    cfg = _cfg(tiny_model, tmp_path, training__batch_size=8, training__grad_accum=2,
               training__gradient_checkpointing=False)
    on_gpu = remedies(cfg, gpu=True)
    assert [c["training.batch_size"] * c["training.grad_accum"] for c in on_gpu[:3]] == [16, 16, 16]
    assert [c["training.batch_size"] for c in on_gpu[:3]] == [4, 2, 1]
    assert on_gpu[3] == {**on_gpu[2], "training.gradient_checkpointing": True}
    assert on_gpu[4] == {**on_gpu[3], "model.method": "qlora"}
    assert all("model.method" not in c for c in remedies(cfg, gpu=False))  # no QLoRA without a GPU


@pytest.mark.slow
def test_a_plan_job_measures_the_real_training_here_and_prices_each_jobs_flavor(tiny_model, tmp_path, hub,
                                                                                monkeypatch):
    """The page's Plan: a job of its own, queued on this machine like training (its probe never shares the GPU with
    a run), whose events hold its stages and then the plan."""
    from phi3space.jobs.hf import flavors

    monkeypatch.setattr(flavors, "_hardware", None)  # the stand-in's list, not one an earlier test cached
    cfg = _cfg(tiny_model, tmp_path)
    runner = JobRunner(tmp_path / "data", slots=1, poll_s=0.1, space=False)
    try:
        job = runner.submit(cfg, "me", name="qa", kind=PLAN)
        assert job.name == "qa-plan" and job.kind == "plan" and job.backend == "local"
        done = wait_job(runner, job.id, timeout=300)
    finally:
        runner.shutdown()
    assert done["status"] == "completed", done
    events, _ = job.run.read_events()
    said = [e["stage"] for e in events if e["type"] == "progress"]
    assert said[0] == "reading and measuring the training rows" and "probing 6 steps of the run as set" in said[1]
    plan = job.run.state().plan
    assert [e for e in events if e["type"] == "plan"][0]["tokens_per_s"] == plan["tokens_per_s"]
    assert plan["fits"] is True and plan["settings_that_fit"] == {}
    assert 100e6 < plan["peak_memory_bytes"] < 4e9 and plan["tokens_per_s"] > 0
    assert plan["rows"] == 4 and plan["tokens"] == pytest.approx(40 * 4 * plan["mean_row_tokens"], rel=0.01)
    probe = plan["probes"][0]
    assert probe["steps"] == 6 and probe["problem"] is None and probe["startup_s"] > 0
    assert plan["eta_s"] == pytest.approx(probe["startup_s"] + plan["tokens"] / probe["tokens_per_s"], abs=1)
    here, *elsewhere = plan["options"]
    assert here["flavor"] == "here" and here["measured"] is True and here["cost_usd"] is None
    by_name = {o["flavor"]: o for o in elsewhere}
    assert "cpu-basic" not in by_name and {"t4-small", "a10g-large", "h200"} <= set(by_name)
    a10g, h200 = by_name["a10g-large"], by_name["h200"]
    assert a10g["cost_usd"] > 0 and a10g["error"] > here["error"] and h200["tokens_per_s"] > a10g["tokens_per_s"]
    # The price is the flavor's hourly price times the estimated time (the stand-in's price list, per minute there)
    price = next(f for f in hub.jobs.hardware if f["name"] == "a10g-large")["unitCostUSD"] * 60
    assert a10g["cost_usd"] == pytest.approx(price * a10g["eta_s"] / 3600, abs=0.01)


@pytest.mark.slow
def test_a_run_whose_base_cannot_load_here_does_not_fit_and_says_why(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PHI3SPACE_MEMORY_LIMIT_BYTES", str(50 * 2**20))  # 50 MB: the process alone is more
    plan = make_plan(_cfg(tiny_model, tmp_path), folder=tmp_path / "plan")
    assert plan["fits"] is False and plan["settings_that_fit"] is None and plan["eta_s"] is None
    assert len(plan["probes"]) == 1  # a smaller batch does not make a base load: no remedy is probed
    assert plan["probes"][0]["problem"].startswith("training needs about 0.5 GB of memory to load")
    assert [o["flavor"] for o in plan["options"]][:1] != ["here"]


def test_the_probe_times_a_step_as_a_fixed_cost_plus_its_tokens_and_prices_the_runs_own_steps():
    """A probe mixes the longest micro-batch into a few steps: the run's speed is read from a line through the
    steps' (tokens, seconds), at the run's own tokens per step, not from the probe's mean (issue 31's 25%)."""
    from phi3space.engine.probe import Probe, step_time

    fixed, per_token, elapsed, seen, progress = 0.5, 0.001, 2.0, 900, []
    for tokens in (900, 2000, 300, 500, 400, 600):  # the first (warm-up) step is not timed
        elapsed += fixed + per_token * tokens if progress else 0
        seen += tokens if progress else 0
        progress.append({"tokens": seen, "elapsed_s": elapsed})
    assert step_time(progress) == pytest.approx((fixed, per_token))
    probe = Probe(tokens_per_s=999.0, step_s=step_time(progress))
    assert probe.speed_at(400) == pytest.approx(400 / (0.5 + 0.4))  # the run's 400-token steps: 444 tokens/s
    assert probe.speed_at(4000) == pytest.approx(4000 / 4.5)
    assert step_time(progress[:3]) is None and Probe(tokens_per_s=999.0).speed_at(400) == 999.0  # too few: its mean
    flat = [{"tokens": 100 * i, "elapsed_s": 1.0 * i} for i in range(6)]
    assert step_time(flat) is None  # all steps alike: no line
