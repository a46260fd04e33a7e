"""RunConfig: the one typed, validated description of a run.

Built from YAML plus ``--set a.b=value`` overrides, checked up front (all problems reported at once, each by key
name with the allowed values), saved beside the run and pushed with the adapter so that a run can be repeated.
Each field is declared once (``fields.setting``), its help text, allowed values, aliases and form group in its
``metadata``: the reference the README shows, the checks and the web form are derived from it.

The package in four parts, all re-exported here: ``fields`` (``setting()`` and the tables derived from the
declarations), ``schema`` (the settings, their defaults, help text, allowed values and validation rules),
``loading`` (YAML files and text, ``--set`` overrides, what is refused on the way in) and ``docs`` (the reference
table).
"""

from phi3space.config.docs import reference
from phi3space.config.loading import HF_TOKEN_PATTERN, MAX_CONFIG_BYTES, TOKEN_HINT, from_dict, load, loads
from phi3space.config.schema import (
    _SECTION_CLASSES,
    ALIASES,
    DEFAULT_BASE,
    ELSEWHERE,
    METHODS,
    PHI3_TARGET_MODULES,
    RANGES,
    SCHEDULERS,
    SETTINGS,
    DataConfig,
    LoraSettings,
    ModelConfig,
    OutputConfig,
    Range,
    RunConfig,
    TrainingConfig,
    _allowed_keys,
    auto_repo_name,
    default_run_name,
    section_classes,
    short_name,
    unused_auto_name,
)

__all__ = [
    "ALIASES", "DEFAULT_BASE", "ELSEWHERE", "HF_TOKEN_PATTERN", "MAX_CONFIG_BYTES", "METHODS", "PHI3_TARGET_MODULES",
    "RANGES", "SCHEDULERS", "SETTINGS", "TOKEN_HINT", "DataConfig", "LoraSettings",
    "ModelConfig", "OutputConfig", "Range", "RunConfig", "TrainingConfig", "auto_repo_name", "default_run_name",
    "from_dict", "load", "loads", "reference", "section_classes", "short_name", "unused_auto_name",
    "_SECTION_CLASSES", "_allowed_keys",  # private, for the tests
]
