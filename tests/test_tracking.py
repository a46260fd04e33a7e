"""Experiment tracking: logging.report_to (none by default, trackio, wandb) goes to the trainer as transformers'
report_to; a tracker that is not installed is refused before anything loads; the run's Hugging Face token never
reaches the tracker's config (trackio, in its local mode, trained for real)."""

import importlib.util
import os
import types

import pytest
from helpers import CANARY, memorise_config

from phi3space import config
from phi3space.engine.modeling import detect_hardware
from phi3space.engine.sft import build_sft_config
from phi3space.errors import ConfigError


def run_config(tmp_path, report_to=None, **extra):
    cfg = memorise_config("base", str(tmp_path / "qa.jsonl"), tmp_path / "run", **extra)
    if report_to:
        cfg["logging"] = {"report_to": report_to}
    return config.from_dict(cfg)


def test_report_to_reaches_the_trainer_and_is_off_by_default(tmp_path):
    hw = detect_hardware()
    assert config.RunConfig().logging.report_to == "none"
    assert build_sft_config(run_config(tmp_path), hw, False).report_to == []
    args = build_sft_config(run_config(tmp_path, "trackio"), hw, False)
    assert args.report_to == ["trackio"] and args.project == "phi3space" and args.run_name == "run"
    with pytest.raises(ConfigError, match="is not one of none, trackio, wandb"):
        run_config(tmp_path, "tensorboard")


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_tracker_that_is_not_installed_is_refused_with_the_command_that_installs_it(tmp_path):
    with pytest.raises(ConfigError, match="wandb is not installed") as err:
        build_sft_config(run_config(tmp_path, "wandb"), detect_hardware(), False)
    assert "pip install wandb" in err.value.hint


@pytest.mark.slow
def test_a_run_logged_to_trackio_keeps_the_token_out_of_its_config(tiny_model, qa_file, tmp_path, monkeypatch):
    trackio = pytest.importorskip("trackio.utils")
    from phi3space.engine import training

    root = trackio.TRACKIO_DIR  # its local store (under the tests' HF_HOME), fixed when trackio is imported
    monkeypatch.setenv("HF_TOKEN", CANARY)  # where a careless integration would find it
    cfg = config.from_dict(memorise_config(tiny_model, str(qa_file), tmp_path / "run", training__max_steps=5,
                                           logging__report_to="trackio"))
    training.train(cfg, token=CANARY)
    stored = [p for p in root.rglob("*") if p.is_file() and "phi3space" in p.name]
    assert stored, "trackio logged nothing"
    everything = b"".join(p.read_bytes() for p in stored)
    assert b"learning_rate" in everything and b"train/loss" in everything  # the run's config and its losses
    assert CANARY.encode() not in everything
    assert os.environ["HF_TOKEN"] == CANARY


@pytest.mark.parametrize("private", [True, False])
def test_trackios_dashboard_space_and_its_static_copy_are_as_private_as_the_run(tmp_path, monkeypatch, private):
    """transformers' TrackioCallback (the installed one) makes trackio's dashboard Space at the start and its static
    copy at the end with ``private=hub_private_repo``; None (the default) leaves both public whatever the run is."""
    trackio = pytest.importorskip("trackio")
    from transformers import TrainerControl, TrainerState
    from transformers.integrations.integration_utils import TrackioCallback

    args = build_sft_config(run_config(tmp_path, "trackio", output__private=private), detect_hardware(), False)
    assert args.hub_private_repo is private
    made = {}

    def init(**kwargs):  # trackio.init with a Space: it creates the Space with ``private`` (trackio/deploy.py)
        made["space"] = kwargs
        trackio.context_vars.current_space_id.set("alice/phi3space-trackio")

    def freeze(**kwargs):  # trackio.freeze: the static copy, created with ``private`` (deploy_as_static_space)
        made["static"] = kwargs
        return kwargs["new_space_id"]

    monkeypatch.setattr(trackio, "init", init)
    monkeypatch.setattr(trackio, "freeze", freeze)
    monkeypatch.setattr(trackio, "finish", lambda: None)
    monkeypatch.setattr(trackio, "config", {}, raising=False)
    callback, state, model = TrackioCallback(), TrainerState(), types.SimpleNamespace(config=None, peft_config=None)
    callback.on_train_begin(args, state, TrainerControl(), model=model)
    callback.on_train_end(args, state, TrainerControl(), model=model)
    assert made["space"]["private"] is private and made["static"]["private"] is private
