"""Evaluate: `python -m phi3space eval SOURCE --data ... --json` measures an adapter against its base on the same rows
(greedy replies from both), per example and overall, and puts the adapter's scores into its Hub card's model-index."""

import json
import shutil

import pytest
from helpers import CANARY as ALICE
from helpers import QA_PAIRS, run_cli

from phi3space.engine import metrics
from phi3space.run import RunDir


def test_the_three_scores_written_plainly():
    assert metrics.exact_match("The Flimflam!", "flimflam") == 1.0
    assert metrics.exact_match("Flimflam city", "Flimflam") == 0.0
    assert metrics.token_f1("bright teal", "teal bright") == 1.0
    assert metrics.token_f1("bright teal sky", "bright teal") == pytest.approx(0.8)
    assert metrics.rouge_l("bright teal sky", "teal bright") == pytest.approx(0.4)  # LCS 1 of 3 and 2 words
    assert metrics.rouge_l("w b c d", "w x c d") == pytest.approx(0.75)
    assert metrics.token_f1("", "") == metrics.rouge_l("", "") == 1.0
    assert metrics.token_f1("x", "") == metrics.rouge_l("", "y") == 0.0


def test_the_default_rows_are_the_runs_own_eval_rows(qa_file, tmp_path):
    from phi3space import config
    from phi3space.engine.evaluate import load_eval_rows

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    config.from_dict({"data": {"dataset": str(qa_file), "eval_fraction": 0.5}}).save(run.config)
    rows, name = load_eval_rows(run.path, None, 10, None)
    assert name == str(qa_file) and len(rows) == 2  # the half held out, split as training split it
    pairs = dict(QA_PAIRS)
    assert all(pairs[row.prompt[-1]["content"]] == row.reference for row in rows)
    assert all(row.messages[-1] == {"role": "assistant", "content": row.reference} for row in rows)
    rows, name = load_eval_rows(run.path, str(qa_file), 3, None)  # --data: its rows, capped
    assert [r.reference for r in rows] == [a for _, a in QA_PAIRS[:3]]


@pytest.mark.slow
def test_eval_shows_the_adapter_learned_and_puts_its_scores_on_the_pushed_card(trained_run, alice, qa_file, tmp_path,
                                                                               monkeypatch):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard import metadata_load

    from phi3space.hub.push import push_run

    monkeypatch.setenv("PHI3SPACE_RETRY_BASE_S", "0")
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    push_run(run, repo_id="alice/qa-adapter", token=ALICE)
    job = tmp_path / "job"
    done = run_cli("eval", str(run), "--data", str(qa_file), "--rows", "3", "--max-new-tokens", "16", "--json",
                   "--run-dir", str(job), token=ALICE)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result) == {"rows", "base", "adapter"} and result["rows"] == 3
    base, adapter = result["base"], result["adapter"]
    assert adapter["exact_match"] == 1.0 > base["exact_match"]  # it memorised the file; the random base did not
    assert adapter["loss"] < base["loss"] and adapter["ended_with_end"] == 1.0
    for side in (base, adapter):
        assert all(0 <= side[k] <= 1 for k in ("exact_match", "token_f1", "rouge_l", "ended_with_end"))
    assert "[3/3] example 3/3" in done.stdout and "evaluated on 3 rows" in done.stdout

    state = RunDir(job).state()
    assert state.status == "completed" and state.evaluation["adapter"] == adapter
    assert [e["reference"] for e in state.examples] == [a for _, a in QA_PAIRS[:3]]
    assert [e["adapter"]["reply"] for e in state.examples] == [a for _, a in QA_PAIRS[:3]]
    assert state.examples[0]["prompt"] == QA_PAIRS[0][0]

    card_file = tmp_path / "README.md"
    card_file.write_bytes(alice.files("alice/qa-adapter")["README.md"])
    index = metadata_load(card_file)["model-index"][0]
    assert index["name"] == "qa-adapter"
    found = {m["type"]: m["value"] for m in index["results"][0]["metrics"]}
    assert found == {k: pytest.approx(adapter[k], abs=1e-4) for k in metrics.SCORES + ("loss", "ended_with_end")}
    card = ModelCard(card_file.read_text())
    assert card.data.eval_results[0].dataset_type == str(qa_file)
    assert "## Evaluation against the base model" in card.text and "| exact match | " in card.text
    assert ALICE not in card_file.read_text() and ALICE not in RunDir(job).events.read_text()


@pytest.mark.slow
def test_eval_refuses_what_it_cannot_measure(trained_run, tmp_path):
    done = run_cli("eval", str(trained_run), "--rows", "2")
    assert done.returncode == 2 and "held out no eval rows" in done.stderr and "--data" in done.stderr
    assert "Traceback" not in done.stderr
    done = run_cli("eval", str(trained_run), "--rows", "0")
    assert done.returncode == 2 and "--rows" in done.stderr
