"""Preference tuning: trl's DPOConfig for a run and trl's DPOTrainer over preference pairs (``pairs``), with the
same LoRA or QLoRA adapter set-up as SFT; and the starting adapter a run may continue from (model.init_adapter),
whatever its objective. ``training`` loads the model and hands it here.

The reference model is never a second copy of the base. With a new adapter trl computes the reference with the
adapter disabled (the base itself: ``DPOTrainer`` sets ``ref_model=None`` for a peft model and wraps the reference
pass in ``use_adapter(model, adapter_name=None)``). Starting from an adapter (SFT then DPO), trl adds a frozen copy
of it, named "ref", as the reference: the SFT model, as the recipe wants, at the cost of one more adapter's weights.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from phi3space.config import RunConfig
from phi3space.engine.data import Prepared
from phi3space.engine.modeling import Hardware
from phi3space.engine.sft import new_adapter, training_arguments
from phi3space.errors import ConfigError
from phi3space.run import RunDir

REFERENCE_ADAPTER = "ref"  # the name trl gives its frozen copy of a starting adapter


def build_dpo_config(cfg: RunConfig, hw: Hardware, has_eval: bool):
    """trl's DPO settings: the shared ones (``sft.training_arguments``), the pairs' max_length (trl tokenises
    and truncates them), beta and the loss type."""
    from trl import DPOConfig

    t = cfg.training
    return DPOConfig(**{**training_arguments(cfg, hw, has_eval), "max_length": t.max_length}, beta=t.beta,
                     loss_type=[t.loss_type], precompute_ref_log_probs=False)


def dpo_trainer(cfg: RunConfig, model, data: Prepared, hw: Hardware, callbacks=()):
    """trl's DPOTrainer over the prepared pairs, with a new LoRA adapter on ``model`` (or the one it carries)."""
    from transformers import PrinterCallback

    trainer = _trainer_class()(model=model, ref_model=None, args=build_dpo_config(cfg, hw, data.eval is not None),
                               train_dataset=data.train, eval_dataset=data.eval, processing_class=data.tokenizer,
                               peft_config=new_adapter(cfg, model), callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)  # progress is reported through events, not printed dicts
    return trainer


def _trainer_class():
    """trl's DPOTrainer, saving only the trained adapter: trl's frozen reference copy stays out of the run folder,
    its checkpoints and the pushed repo."""
    from trl import DPOTrainer

    class Trainer(DPOTrainer):
        def _save(self, output_dir=None, state_dict=None):
            model = self.accelerator.unwrap_model(self.model)
            if REFERENCE_ADAPTER not in getattr(model, "peft_config", {}):
                return super()._save(output_dir, state_dict)
            # transformers' own saving (ranks, tokenizer, training arguments), with peft told to save one adapter
            model.save_pretrained = partial(type(model).save_pretrained, model, selected_adapters=["default"])
            try:
                return super()._save(output_dir, state_dict)
            finally:
                del model.save_pretrained

    return Trainer


# ---------------------------------------------------------------- the starting adapter

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
