import dataclasses
from dataclasses import fields

import pytest
import yaml

from phi3space import config
from phi3space.errors import ConfigError


def test_defaults_are_lora_defaults_for_phi3():
    cfg = config.from_dict({"data": {"dataset": "user/data"}})
    assert cfg.model.base == "microsoft/Phi-3-mini-4k-instruct"
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules) == (16, 32, 0.05, "all-linear")
    t = cfg.training
    assert (t.learning_rate, t.lr_scheduler, t.epochs, t.max_length) == (2e-4, "cosine", 1.0, 2048)
    assert 0 < t.warmup_ratio <= 0.1
    assert cfg.output.dir == "runs/phi-3-mini-4k-instruct-data-lora"


def test_overrides_are_typed_and_win_over_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"dataset": "a.jsonl"}, "lora": {"r": 4}}))
    cfg = config.load(path, ["lora.r=8", "training.learning_rate=1e-4", "model.method=qlora",
                             "lora.target_modules=qkv_proj,o_proj", "data.columns={prompt: q, completion: a}",
                             "output.private=false"])
    assert cfg.lora.r == 8 and cfg.training.learning_rate == 1e-4 and cfg.model.method == "qlora"
    assert cfg.lora.target_modules == ["qkv_proj", "o_proj"]
    assert cfg.data.columns == {"prompt": "q", "completion": "a"}
    assert cfg.output.private is False


def test_every_problem_is_reported_at_once_by_key():
    with pytest.raises(ConfigError) as info:
        config.from_dict({"model": {"method": "full"}, "lora": {"r": 0, "dropout": 1.0, "target_modules": ["q_proj"]},
                          "training": {"learning_rate": 0, "bach_size": 2, "max_length": 8}})
    text = str(info.value)
    for key in ("model.method", "lora.r", "lora.dropout", "lora.target_modules", "training.learning_rate",
                "training.max_length", "data.dataset"):
        assert key in text
    assert "did you mean training.batch_size" in text
    with pytest.raises(ConfigError, match="output.push_checkpoints: needs output.push_to"):
        config.from_dict({"data": {"dataset": "x"}, "output": {"push_checkpoints": True}})
    assert "qkv_proj" in text  # the cookbook's q_proj names are explained, not silently ignored
    assert len(info.value.problems) == 8


def test_type_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"lora.r: expected int, got 'big'"):
        config.from_dict({"data": {"dataset": "x"}}, ["lora.r=big"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        config.from_dict({"data": {"dataset": "x"}}, ["lora.r"])


def test_saved_config_round_trips(tmp_path):
    cfg = config.from_dict({"data": {"dataset": "user/data", "columns": {"prompt": "q"}}}, ["lora.r=32"])
    cfg.save(tmp_path / "config.yaml")
    assert config.load(tmp_path / "config.yaml") == cfg


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(tmp_path / "bad.yaml")


def test_every_numeric_setting_has_a_range_that_holds_its_default():
    cfg = config.RunConfig()
    numeric = {f"{s}.{f.name}" for s, cls in config._SECTION_CLASSES.items() for f in fields(cls)
               if str(f.type).split("|")[0].strip() in ("int", "float")}
    assert numeric == set(config.RANGES)
    for key, allowed in config.RANGES.items():
        section, name = key.split(".")
        default = getattr(getattr(cfg, section), name)
        assert default is None or allowed.allows(default), key
    assert str(config.RANGES["lora.dropout"]) == "[0, 1)" and str(config.RANGES["training.epochs"]) == "(0, 1000]"


def test_aliases_point_at_real_settings():
    assert set(config.ALIASES.values()) <= set(config._allowed_keys())
    with pytest.raises(ConfigError, match=r"training.lr: unknown setting \(did you mean training.learning_rate\?\)"):
        config.from_dict({"data": {"dataset": "x"}, "training": {"lr": 1e-4}})


def test_anchors_are_fine_aliases_are_not():
    assert config.loads("data: {dataset: &d x.jsonl}").data.dataset == "x.jsonl"
    with pytest.raises(ConfigError, match=r"config uses the YAML alias \*d \(line 2, column 19\)"):
        config.loads("data: {dataset: &d x.jsonl}\noutput: {push_to: *d}")


def test_a_token_anywhere_is_refused_and_never_echoed():
    token = "hf_" + "Ab1" * 10
    with pytest.raises(ConfigError) as info:
        config.from_dict({"data": {"dataset": "x"}, "lora": {"target_modules": ["qkv_proj", f"{token}"]}})
    assert info.value.problems == [
        "lora.target_modules: holds what looks like a Hugging Face access token (not shown here)"]
    assert token not in str(info.value) and "HF_TOKEN" in info.value.hint
    assert config.from_dict({"data": {"dataset": "hf_short_name"}}).data.dataset == "hf_short_name"


def test_config_text_is_capped():
    with pytest.raises(ConfigError, match="over the 64 KiB limit"):
        config.loads("data: {dataset: x}\n" + "#" * config.MAX_CONFIG_BYTES)


def test_a_setting_is_declared_once_and_its_tables_are_derived():
    from dataclasses import dataclass

    from phi3space.config.fields import aliases_of, group_of, ranges_of, setting, settings_of

    @dataclass
    class Extra:
        rate: float = setting(0.5, "A rate.", range=config.Range(0, 1), step=0.1, aliases=("r8",), group="advanced")
        name: str = setting("a", "A name.", choices=("a", "b"))
        hidden: str = setting("", "Chosen by the server.", group=None)
        tags: list = setting(["x"], "Tags.")

    settings = settings_of({"extra": Extra})
    assert list(settings) == ["extra.rate", "extra.name", "extra.hidden", "extra.tags"]
    assert ranges_of(settings) == {"extra.rate": config.Range(0, 1)} and aliases_of(settings) == {"r8": "extra.rate"}
    assert [group_of(key, f) for key, f in settings.items()] == ["advanced", "extra", None, "extra"]
    assert settings["extra.name"].metadata == {"help": "A name.", "choices": ("a", "b")}
    assert Extra().tags == ["x"] and Extra().tags is not Extra().tags
    with pytest.raises(ValueError, match="'r8' is given to both extra.rate and more.other"):
        aliases_of({**settings, "more.other": dataclasses.field(metadata={"aliases": ("r8",)})})
    # The run config's own tables are read from its declarations.
    assert config.RANGES["training.learning_rate"] is config.SETTINGS["training.learning_rate"].metadata["range"]
    from phi3space.jobs import spec

    assert config.ALIASES["lr"] == "training.learning_rate" and spec.JobConfig.aliases()["hardware"] == "compute.flavor"
