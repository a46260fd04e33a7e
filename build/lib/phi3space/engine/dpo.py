"""Preference tuning: trl's DPOConfig for a run and trl's DPOTrainer over preference pairs (``pairs``), with the
same LoRA or QLoRA adapter set-up as SFT (``sft``). ``training`` loads the model and hands it here; ``objectives``
registers it, with its pairs, as the DPO objective.

The reference model is never a second copy of the base. With a new adapter trl computes the reference with the
adapter disabled (the base itself: ``DPOTrainer`` sets ``ref_model=None`` for a peft model and wraps the reference
pass in ``use_adapter(model, adapter_name=None)``). Starting from an adapter (SFT then DPO), trl adds a frozen copy
of it, named "ref", as the reference: the SFT model, as the recipe wants, at the cost of one more adapter's weights.
"""

from __future__ import annotations

from functools import partial

from phi3space.config import RunConfig
from phi3space.engine.data import Prepared
from phi3space.engine.modeling import Hardware
from phi3space.engine.sft import new_adapter, training_arguments

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

