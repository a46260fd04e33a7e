"""The Phi-3 cookbook's LoRA recipe (microsoft/Phi-3CookBook, code/03.Finetuning/Phi-3-finetune-lora-python/
sample_finetune.py), brought up to date for trl 1.16, transformers 5 and peft 0.21: the yardstick of
bench/train_vs_recipe.py.

What is kept from the recipe: the chat template rendered into a ``text`` column, SFTTrainer with packing at
max_length, gradient checkpointing (non-reentrant), batch 4 without accumulation, LoRA r16/alpha32/dropout 0.05 on all
linear layers, learning rate 5e-6 with cosine decay and 20% warm-up, seed 0, a checkpoint every 100 steps (one kept),
the pad token set to <unk> on the right. What changed, because the libraries changed: ``max_seq_length`` is
``max_length``, ``tokenizer=`` is ``processing_class=``, ``torch_dtype`` is ``dtype``, no ``trust_remote_code`` (Phi-3
is native), no ``overwrite_output_dir``, ``warmup_ratio`` is a float ``warmup_steps``; bf16 and flash-attention only
where the hardware has them (sdpa and float32 on a CPU); ``num_proc=10`` of the chat-template map is left out (on a
small machine it only adds start-up time, which would flatter this project).

    python bench/cookbook_recipe.py BASE TRAIN.jsonl OUT_DIR [--max-length 1024] [--max-steps N]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time


def train(base: str, train_file: str, out_dir: str, max_length: int = 2048, max_steps: int = -1) -> dict:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.get_device_capability(0)[0] >= 8
    training_config = {
        "bf16": bf16,
        "fp16": cuda and not bf16,
        "use_cpu": not cuda,
        "do_eval": False,
        "learning_rate": 5.0e-06,
        "log_level": "info",
        "logging_steps": 20,
        "logging_strategy": "steps",
        "lr_scheduler_type": "cosine",
        "num_train_epochs": 1,
        "max_steps": max_steps,
        "output_dir": out_dir,
        "per_device_eval_batch_size": 4,
        "per_device_train_batch_size": 4,
        "remove_unused_columns": True,
        "save_steps": 100,
        "save_total_limit": 1,
        "seed": 0,
        "gradient_checkpointing": True,
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
        "gradient_accumulation_steps": 1,
        "warmup_steps": 0.2,
        "report_to": "none",
    }
    peft_config = {
        "r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "bias": "none",
        "task_type": "CAUSAL_LM",
        "target_modules": "all-linear",
        "modules_to_save": None,
    }
    attn = "flash_attention_2" if bf16 and importlib.util.find_spec("flash_attn") else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(base, use_cache=False, attn_implementation=attn,
                                                 dtype=torch.bfloat16 if bf16 else torch.float16 if cuda else torch.float32,
                                                 device_map=None)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.model_max_length = max_length
    tokenizer.pad_token = tokenizer.unk_token  # use unk rather than eos token to prevent endless generation
    tokenizer.pad_token_id = tokenizer.convert_tokens_to_ids(tokenizer.pad_token)
    tokenizer.padding_side = "right"

    def apply_chat_template(example, tokenizer):
        example["text"] = tokenizer.apply_chat_template(example["messages"], tokenize=False, add_generation_prompt=False)
        return example

    raw = load_dataset("json", data_files=train_file, split="train")
    processed = raw.map(apply_chat_template, fn_kwargs={"tokenizer": tokenizer}, remove_columns=raw.column_names,
                        desc="Applying chat template to train_sft")

    marks: dict = {}

    class Marks(TrainerCallback):  # for the benchmark: when training began and when the first step ended
        def on_train_begin(self, args, state, control, **kw):
            marks.setdefault("train_begin", time.time())

        def on_step_end(self, args, state, control, **kw):
            marks.setdefault("first_step", time.time())

    trainer = SFTTrainer(model=model, args=SFTConfig(**training_config, max_length=max_length, packing=True,
                                                     dataset_text_field="text"),
                         peft_config=LoraConfig(**peft_config), train_dataset=processed, processing_class=tokenizer,
                         callbacks=[Marks()])
    result = trainer.train()
    trainer.save_model(out_dir)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"steps": trainer.state.global_step, "train_runtime_s": result.metrics["train_runtime"],
            "train_loss": result.training_loss, "final_train_loss": losses[-1] if losses else result.training_loss,
            **marks}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("base")
    p.add_argument("train_file")
    p.add_argument("out_dir")
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--max-steps", type=int, default=-1)
    a = p.parse_args()
    print(json.dumps(train(a.base, a.train_file, a.out_dir, a.max_length, a.max_steps)))
