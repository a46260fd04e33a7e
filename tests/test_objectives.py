"""Training objectives are a registry in two halves (phi3space.config.objectives for the config, the form, the CLI
and the card; phi3space.engine.objectives for the data, the trainer and the estimates): both name the same
objectives, and nothing else compares an objective's name."""

import ast
from pathlib import Path

import pytest

from phi3space import config
from phi3space.config import objectives as config_objectives
from phi3space.config.schema import TrainingConfig
from phi3space.engine import objectives as engine_objectives

PACKAGE = Path(__file__).resolve().parent.parent / "phi3space"
REGISTRIES = {PACKAGE / "config" / "objectives.py", PACKAGE / "engine" / "objectives.py"}


def test_both_registries_name_the_same_objectives():
    assert list(config_objectives.OBJECTIVES) == list(engine_objectives.OBJECTIVES)
    for name in config_objectives.OBJECTIVES:
        assert config_objectives.OBJECTIVES[name].name == engine_objectives.OBJECTIVES[name].name == name


def test_the_setting_offers_the_registered_objectives_with_their_help():
    field = TrainingConfig.__dataclass_fields__["objective"]
    assert tuple(field.metadata["choices"]) == tuple(config_objectives.OBJECTIVES)
    for objective in config_objectives.OBJECTIVES.values():
        assert f"{objective.name}: {objective.help}" in field.metadata["help"]


@pytest.mark.parametrize("name", list(config_objectives.OBJECTIVES))
def test_each_objective_names_its_runs_and_checks_its_settings(name):
    cfg = config.from_dict({"data": {"dataset": "x/y"}, "training": {"objective": name}})
    assert config.default_run_name(cfg).endswith(f"-lora{config_objectives.OBJECTIVES[name].run_suffix}")
    assert config_objectives.objective_of(cfg).problems(cfg) == []
    assert engine_objectives.objective_of(cfg).name == name


def test_only_the_registries_compare_an_objective_name():
    """Everywhere else asks the objective it holds (as backends are asked, tests/test_layers.py)."""
    names = set(config_objectives.OBJECTIVES)
    spelled = []
    for path in PACKAGE.rglob("*.py"):
        if path in REGISTRIES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in names
                                                     for c in [node.left, *node.comparators]):
                spelled.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert spelled == []
