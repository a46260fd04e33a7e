"""The adapter a run starts from (``model.init_adapter``: a run folder, or a Hub adapter repo), whatever its
objective: an SFT run continued, or the SFT adapter a DPO run prefers from. Without one, the objective's trainer
adds a new LoRA adapter.
"""

from __future__ import annotations

from pathlib import Path

from phi3space.config import RunConfig
from phi3space.errors import ConfigError
from phi3space.run import RunDir


def check_init_adapter(cfg: RunConfig, token: str | None) -> Path | None:
    """The starting adapter's folder (a run folder, or a Hub adapter repo downloaded), after checking that it was
    trained on model.base; None when the run starts a new adapter.

    Raises:
        ModelError: not found, not an adapter, or no access.
        ConfigError: trained on another base model.
    """
    ref = cfg.model.init_adapter
    if not ref:
        return None
    from phi3space.engine.adapters import resolve_adapter

    path = resolve_adapter(ref, token)
    base = RunDir(path).adapter_base()
    if Path(base).name.lower() != Path(cfg.model.base).name.lower() and base != cfg.model.base:
        raise ConfigError([f"model.init_adapter: {ref} was trained on {base}, not on model.base {cfg.model.base}"],
                          f"Set model.base: {base}, or start from an adapter trained on {cfg.model.base}.")
    return path


def with_init_adapter(model, path: Path | None):
    """``model`` carrying the starting adapter, trainable (peft), or ``model`` itself when there is none."""
    if path is None:
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(path), is_trainable=True)
