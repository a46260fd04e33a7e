"""``train --push-anyway`` sets output.push_if_worse (a run that got worse at general skills pushes anyway), and
inside a Hugging Face job it is always on, said in the run's log: the job's disk is gone when it ends, so a held
adapter would be lost. (The training itself is replaced here: only what the CLI hands it is checked.)"""

import json

import pytest
import yaml

from phi3space import cli
from phi3space.cli import train as train_command
from phi3space.jobs.hf.protocol import EVENT_PREFIX


@pytest.fixture
def trained(monkeypatch, tmp_path):
    """The configs the CLI hands to training (which does not run)."""
    seen = []

    def fake_train(cfg, resume, token, echo):
        seen.append(cfg)
        return tmp_path / "run"

    monkeypatch.setattr(train_command, "train", fake_train)
    return seen


def _config(tmp_path, **output):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"dataset": "user/data"}, "output": {"dir": str(tmp_path / "run"), **output}}))
    return path


def test_push_anyway_sets_push_if_worse(trained, tmp_path):
    assert cli.main(["train", str(_config(tmp_path))]) == 0
    assert cli.main(["train", str(_config(tmp_path)), "--push-anyway"]) == 0
    assert [cfg.output.push_if_worse for cfg in trained] == [False, True]


def test_inside_a_job_the_push_is_never_held_and_the_log_says_why(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PHI3SPACE_TEST_CONFIG", _config(tmp_path).read_text())
    assert cli.main(["train", "env:PHI3SPACE_TEST_CONFIG"]) == 0
    assert trained[-1].output.push_if_worse is True
    out = capsys.readouterr().out
    said = [json.loads(line.removeprefix(EVENT_PREFIX)) for line in out.splitlines() if line.startswith(EVENT_PREFIX)]
    assert said[0]["type"] == "log" and "never held" in said[0]["message"] and said[0]["seq"] == 1
    assert "push is never held" in out.splitlines()[0]  # the readable line too, for the job's own page
    monkeypatch.setenv("PHI3SPACE_TEST_CONFIG", _config(tmp_path, general_check=False).read_text())
    assert cli.main(["train", "env:PHI3SPACE_TEST_CONFIG"]) == 0  # no check, nothing held: nothing to say
    assert EVENT_PREFIX not in capsys.readouterr().out
