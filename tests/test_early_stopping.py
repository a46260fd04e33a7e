"""Early stopping on the eval loss (training.early_stopping_patience, transformers' EarlyStoppingCallback): a run whose
eval loss stops improving ends there, keeps the best evaluation's adapter, and says so; a setting it cannot honour is
refused before anything loads."""

import json

import pytest
from helpers import QA_PAIRS, memorise_config, write_qa_jsonl

from phi3space import config
from phi3space.errors import ConfigError


def test_patience_without_eval_rows_or_with_unsaved_evaluations_is_refused_with_the_fix():
    with pytest.raises(ConfigError) as err:
        config.from_dict({"data": {"dataset": "x/y", "eval_fraction": 0}, "training": {"early_stopping_patience": 2}})
    assert "training.early_stopping_patience: needs eval rows to watch (data.eval_fraction above 0" in err.value.message
    with pytest.raises(ConfigError) as err:
        config.from_dict({"data": {"dataset": "x/y"}, "training": {"early_stopping_patience": 2, "save_steps": 10,
                                                                "eval_steps": 4}})
    assert "needs training.save_steps (10) to be a multiple of training.eval_steps (4)" in err.value.message
    ok = config.from_dict({"data": {"dataset": "x/y"}, "training": {"early_stopping_patience": 3}})
    assert ok.training.early_stopping_patience == 3


@pytest.mark.slow
def test_a_run_whose_eval_loss_stops_improving_stops_and_keeps_the_best_adapter(tiny_model, tmp_path):
    """The eval rows ask the training questions with other answers: the better the adapter learns its own, the worse
    its eval loss gets after the first steps."""
    from phi3space.engine import training
    from phi3space.run import RunDir

    data = tmp_path / "qa"
    data.mkdir()
    write_qa_jsonl(data / "train.jsonl")
    write_qa_jsonl(data / "test.jsonl", [(q, "I would rather not say, sorry.") for q, _ in QA_PAIRS])
    cfg = config.from_dict(memorise_config(tiny_model, str(data), tmp_path / "run", data__eval_split="test",
                                           training__save_steps=2, training__early_stopping_patience=2))
    run = RunDir(training.train(cfg))
    state = run.state()
    evals = dict(state.eval_losses)
    best_step = min(evals, key=evals.get)
    assert state.status == "completed" and state.step < 40, evals
    assert state.step == max(evals) and best_step <= state.step - 4  # two evaluations without improvement, then stop
    assert state.metrics["stopped_early_at"] == state.step and state.metrics["best_step"] == best_step
    # The adapter saved is the best evaluation's: the final evaluation (of the saved adapter) gives its loss.
    assert state.metrics["eval_loss"] == pytest.approx(evals[best_step], rel=1e-4)
    said = [json.loads(line).get("message", "") for line in run.events.read_text().splitlines()]
    assert any(m.startswith(f"stopped early at step {state.step}: the eval loss did not improve for 2 evaluations")
               and f"from step {best_step}" in m for m in said)
