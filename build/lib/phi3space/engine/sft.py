"""Supervised fine-tuning: trl's SFTConfig for a run, the LoRA adapter's settings, and trl's SFTTrainer as this
project runs it (a compact loss off CUDA, length-balanced micro-batches), over data already tokenised with its labels
(``data.prepare_for_training``). ``training`` loads the model and hands it here; ``objectives`` registers it as
the SFT objective.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache

from phi3space.config import RunConfig
from phi3space.engine.data import Prepared
from phi3space.engine.modeling import Hardware
from phi3space.engine.tokens import render_segments
from phi3space.errors import ConfigError


def report_to(cfg: RunConfig) -> str:
    """The experiment tracker the trainer also logs to (transformers' ``report_to``: none, trackio or wandb).

    Raises:
        ConfigError: the tracker's package is not installed.
    """
    name = cfg.logging.report_to
    if name != "none" and importlib.util.find_spec(name) is None:
        raise ConfigError([f"logging.report_to: {name} is not installed"],
                          f"pip install {name}, or set logging.report_to: none.")
    return name


def build_sft_config(cfg: RunConfig, hw: Hardware, has_eval: bool, balance: bool = False):
    """trl's settings for a run. The rows come tokenised, with their labels (see ``data.prepare_for_training``):
    trl neither tokenises them again nor cuts them, so ``max_length`` is only passed on for packing."""
    from trl import SFTConfig

    return SFTConfig(**training_arguments(cfg, hw, has_eval, balance), packing=cfg.training.packing)


def training_arguments(cfg: RunConfig, hw: Hardware, has_eval: bool, balance: bool = False) -> dict:
    """The settings every objective's trainer takes alike (trl's SFTConfig and DPOConfig): schedule, batches,
    logging, checkpoints, precision, devices."""
    t = cfg.training
    eval_steps = t.eval_steps or t.save_steps
    checkpointing = t.gradient_checkpointing and hw.device == "cuda"
    return dict(
        output_dir=str(cfg.run_dir),
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        max_length=t.max_length if t.packing else None,
        weight_decay=t.weight_decay,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN (and stops the run), not averaged away
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps if has_eval else None,
        # Early stopping watches the eval loss and keeps the best checkpoint's adapter (transformers' own callback,
        # added by the recipe; it needs the best model loaded at the end).
        load_best_model_at_end=bool(t.early_stopping_patience and has_eval),
        metric_for_best_model="eval_loss" if t.early_stopping_patience and has_eval else None,
        greater_is_better=False if t.early_stopping_patience and has_eval else None,
        bf16=hw.bf16,
        fp16=hw.fp16,
        use_cpu=hw.device == "cpu",
        # Both names: trl turns the old one on by default, and it must be off wherever we say so.
        activation_checkpointing=checkpointing,
        gradient_checkpointing=checkpointing,
        # The micro-batches of each optimizer step grouped by length (the same rows per step as a random order):
        # less padding, and the rows stay apart, whatever the attention kernel.
        train_sampling_strategy="batch_rebalance" if balance else "random",
        report_to=report_to(cfg),
        project="phi3space",  # the tracker's project; the run is named after its folder
        # trackio makes its dashboard Space (TRACKIO_SPACE_ID) and, after training, its static copy with this
        # visibility: a private run's metrics stay private (None would leave them public).
        hub_private_repo=cfg.output.private,
        run_name=cfg.run_dir.name,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataset_num_proc=None,
        remove_unused_columns=True,
    )


def lora_config(cfg: RunConfig):
    """peft's LoRA settings for a new adapter (rank, alpha, dropout, the layers it adapts)."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, bias="none", task_type="CAUSAL_LM")


def new_adapter(cfg: RunConfig, model):
    """The LoRA settings for the trainer to add an adapter with; None when ``model`` already carries the one to
    train (model.init_adapter)."""
    from peft import PeftModel

    return None if isinstance(model, PeftModel) else lora_config(cfg)


def sft_trainer(cfg: RunConfig, model, data: Prepared, hw: Hardware, callbacks=()):
    """trl's SFTTrainer (ours, see ``_trainer_class``) over the prepared (tokenised) data, with a LoRA adapter on
    ``model``."""
    from transformers import PrinterCallback

    t = cfg.training
    world = int(os.environ.get("WORLD_SIZE", "1"))
    balance = not t.packing and t.grad_accum > 1 and len(data.train) >= t.batch_size * t.grad_accum * world
    trainer = _trainer_class()(model=model, args=build_sft_config(cfg, hw, data.eval is not None, balance),
                               train_dataset=data.train, eval_dataset=data.eval, processing_class=data.tokenizer,
                               peft_config=new_adapter(cfg, model), callbacks=list(callbacks))
    trainer.compact_loss = hw.device != "cuda"
    trainer.remove_callback(PrinterCallback)  # progress is reported through events, not printed dicts
    return trainer


def render_example(row: dict, tokenizer) -> list[tuple[str, str | None]]:
    """One row for the form: its text as the chat template renders it, in segments, the trained ones labelled."""
    return [(text, "trained" if trained else None) for text, trained in render_segments(row, tokenizer)]


@cache
def _trainer_class():
    """trl's SFTTrainer, with two changes chosen by measurement (bench/train_vs_recipe.py):

    - off CUDA, the loss projects only the trained positions through the LM head (transformers' boolean
      ``logits_to_keep``) and uses torch's cross-entropy. trl's fused LM head has Triton kernels on CUDA (kept there);
      elsewhere it scores every position, padding and prompts included, with a dozen passes over a tokens x vocabulary
      tile: 80% of a CPU step, 4x slower than this.
    - length-balanced micro-batches (transformers' BatchRebalanceSampler) seeded with training.seed.
    """
    import torch
    import torch.nn.functional as F
    from trl import SFTTrainer

    class Trainer(SFTTrainer):
        compact_loss = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self.compact_loss or return_outputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train" if self.model.training else "eval"
            labels = inputs["labels"]
            keep = torch.zeros_like(labels, dtype=torch.bool)
            keep[:, :-1] = labels[:, 1:] != -100  # the positions whose next token is trained
            targets = labels[:, 1:][labels[:, 1:] != -100]
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False, logits_to_keep=keep)
            logits = outputs.logits.reshape(-1, outputs.logits.shape[-1]).float()
            # As trl: summed over the tokens, divided by the trained tokens of the whole (accumulated) batch.
            divisor = targets.numel() if num_items_in_batch is None else num_items_in_batch
            loss = F.cross_entropy(logits, targets, reduction="sum") / torch.as_tensor(divisor).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            with torch.no_grad():
                correct = self.accelerator.gather_for_metrics((logits.argmax(-1) == targets).sum()).sum()
                valid = self.accelerator.gather_for_metrics(torch.tensor(targets.numel(), device=logits.device)).sum()
            self._metrics[mode]["mean_token_accuracy"].append((correct / valid).item() if valid > 0 else 0.0)
            if mode == "train":
                mask = inputs.get("attention_mask")
                seen = mask.sum() if mask is not None else torch.tensor(inputs["position_ids"].size(1))
                self._total_train_tokens += int(self.accelerator.gather_for_metrics(seen.to(logits.device)).sum())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return loss

        def _get_train_sampler(self, train_dataset=None):
            if self.args.train_sampling_strategy != "batch_rebalance":
                return super()._get_train_sampler(train_dataset)
            from transformers.trainer_pt_utils import BatchRebalanceSampler

            args, world = self.args, max(1, self.args.world_size)
            return BatchRebalanceSampler(lengths=self.train_dataset["length"], grad_accum=args.gradient_accumulation_steps,
                                         effective_batch_size=args.train_batch_size * args.gradient_accumulation_steps * world,
                                         dp_size=world, rank=args.process_index if world > 1 else 0,
                                         seed=args.data_seed if args.data_seed is not None else args.seed,
                                         drop_last=args.dataloader_drop_last)

    return Trainer
