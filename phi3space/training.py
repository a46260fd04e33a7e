"""Build and run trl's SFTTrainer from a RunConfig, reporting everything through events.jsonl.

Order matters: cheap checks first (config, run folder, Hub access, data), then the tokenizer (token stats), then
the model, so that a user's mistake is reported in seconds, before gigabytes of weights are loaded.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from pathlib import Path

from . import data as data_mod
from .config import RunConfig
from .errors import Cancelled, ConfigError, OutOfMemory, Phi3SpaceError
from .events import EventWriter
from .modeling import Hardware, check_base, detect_hardware, load_model, load_tokenizer

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint-N folder of a run folder (None when there is none, or no folder)."""
    ckpts = [p for p in Path(run_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1]), default=None)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "huggingface_hub"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _events_callback(writer: EventWriter, stop_flag: dict, on_checkpoint=None):
    """A TrainerCallback that turns trainer logs into progress/eval/checkpoint events and honours Stop."""
    from transformers import TrainerCallback

    class EventsCallback(TrainerCallback):
        def __init__(self):
            self.start = time.time()
            self.last_tokens = (0.0, self.start)

        def on_train_begin(self, args, state, control, **kw):
            self.start = time.time()
            self.first_step = state.global_step
            self.last_tokens = (None, self.start)

        def on_step_end(self, args, state, control, **kw):
            if stop_flag.get("stop"):
                control.should_training_stop = True
                control.should_save = True  # a checkpoint to --resume from

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            now = time.time()
            if "loss" in logs:
                elapsed = now - self.start
                done = state.global_step - self.first_step
                eta = elapsed / done * (state.max_steps - state.global_step) if done else None
                tokens_per_s = None
                if "num_tokens" in logs:
                    prev, t0 = self.last_tokens
                    if prev is not None and now > t0:
                        tokens_per_s = round((logs["num_tokens"] - prev) / (now - t0), 1)
                    self.last_tokens = (logs["num_tokens"], now)
                writer.emit("progress", step=state.global_step, max_steps=state.max_steps,
                            epoch=round(state.epoch or 0, 4), loss=logs["loss"], learning_rate=logs.get("learning_rate"),
                            grad_norm=logs.get("grad_norm"), tokens=logs.get("num_tokens"), tokens_per_s=tokens_per_s,
                            mean_token_accuracy=logs.get("mean_token_accuracy"),
                            elapsed_s=round(elapsed, 2), eta_s=round(eta, 1) if eta is not None else None)
            elif "eval_loss" in logs:
                writer.emit("eval", step=state.global_step, eval_loss=logs["eval_loss"],
                            perplexity=_perplexity(logs["eval_loss"]),
                            eval_token_accuracy=logs.get("eval_mean_token_accuracy"))

        def on_save(self, args, state, control, **kw):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            writer.emit("checkpoint", step=state.global_step, path=str(path))
            if on_checkpoint is not None and is_main_process():
                on_checkpoint(path)

    return EventsCallback()


def _perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    return round(math.exp(loss), 4) if loss < 50 else float("inf")


def build_sft_config(cfg: RunConfig, hw: Hardware, has_eval: bool, chat: bool):
    from trl import SFTConfig

    t = cfg.training
    eval_steps = t.eval_steps or t.save_steps
    return SFTConfig(
        output_dir=str(cfg.run_dir),
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        max_length=t.max_length,
        weight_decay=t.weight_decay,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps if has_eval else None,
        bf16=hw.bf16,
        fp16=hw.fp16,
        use_cpu=hw.device == "cpu",
        activation_checkpointing=t.gradient_checkpointing and hw.device == "cuda",
        packing=t.packing,
        assistant_only_loss=chat,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataset_num_proc=None,
        remove_unused_columns=True,
    )


def lora_config(cfg: RunConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, bias="none", task_type="CAUSAL_LM")


def build_trainer(cfg: RunConfig, token: str | None = None, callbacks=()):
    """Data, tokenizer, model and SFTTrainer for ``cfg``; returns (trainer, dataset report, hardware)."""
    from transformers import PrinterCallback
    from trl import SFTTrainer

    check_base(cfg.model.base, token)  # a wrong or unreachable model fails before the data is read
    train_ds, eval_ds, report = data_mod.prepare(cfg.data, seed=cfg.training.seed, token=token)
    tokenizer = load_tokenizer(cfg.model.base, token)
    data_mod.add_token_stats(report, train_ds, tokenizer, cfg.training.max_length)
    hw = detect_hardware(cfg.model.attn_implementation)
    if cfg.training.packing and hw.attn_implementation != "flash_attention_2":
        # Packed rows share one sequence; only flash-attention's varlen kernels keep them from attending to each other.
        raise ConfigError([f"training.packing: needs flash_attention_2, but this machine uses {hw.attn_implementation}"],
                          "Set training.packing: false, or install flash-attn on an Ampere or newer GPU.")
    model = load_model(cfg.model.base, cfg.model.method, hw, token, cfg.training.gradient_checkpointing)
    chat = "messages" in train_ds.column_names
    trainer = SFTTrainer(model=model, args=build_sft_config(cfg, hw, eval_ds is not None, chat),
                         train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
                         peft_config=lora_config(cfg), callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)  # progress is reported through events, not printed dicts
    return trainer, report, hw


def _checkpoint_to_resume(cfg: RunConfig, resume: bool, token: str | None, writer: EventWriter) -> Path | None:
    """The checkpoint --resume continues from: the newest local one, else the newest on the Hub's checkpoints branch."""
    if not resume:
        return None
    run_dir = cfg.run_dir
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None and cfg.output.push_to and cfg.output.push_checkpoints:
        from .push import fetch_checkpoint

        ckpt = fetch_checkpoint(cfg.output.push_to, run_dir, token)
        if ckpt is not None:
            writer.emit("log", message=f"resuming from {ckpt.name} downloaded from {cfg.output.push_to} (branch checkpoints)")
    if ckpt is None:
        where = f" or on the Hub ({cfg.output.push_to}, branch checkpoints)" if cfg.output.push_checkpoints and cfg.output.push_to else ""
        raise ConfigError([f"--resume: no checkpoint-* folder in {run_dir}{where}"],
                          "Start without --resume, or point output.dir at the run folder you want to continue.")
    return ckpt


def _checkpoint_pusher(cfg: RunConfig, token: str | None, writer: EventWriter):
    """Push each saved checkpoint off the machine; a failed push is reported, training goes on."""
    from .push import push_checkpoint

    def push(path: Path) -> None:
        try:
            push_checkpoint(path, cfg.output.push_to, token, cfg.output.private, writer,
                            keep=cfg.training.save_total_limit)
        except Phi3SpaceError as exc:
            writer.emit("log", message=f"warning: {path.name} was not pushed: {exc.message}")

    return push


def train(cfg: RunConfig, resume: bool = False, token: str | None = None, echo=None) -> Path:
    """Run one fine-tuning job; returns the run folder holding the adapter.

    Raises:
        Phi3SpaceError: for every user mistake (already reported as an ``error`` event).
    """
    run_dir = cfg.run_dir
    if not resume and (latest_checkpoint(run_dir) or (run_dir / "adapter_model.safetensors").exists()):
        # Refused before anything is written: that run's events and adapter stay as they are.
        raise ConfigError([f"output.dir: {run_dir} already holds a run"],
                          "Add --resume to continue it, or choose another folder with --set output.dir=runs/NEW.")
    writer = EventWriter(run_dir, enabled=is_main_process(), echo=echo)
    stop_flag: dict = {}
    trainer = None
    metrics: dict = {}

    def on_signal(signum, frame):  # Stop (SIGTERM, Ctrl-C): finish the step, save, end as "cancelled"
        if stop_flag.get("stop") and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C does not wait
        stop_flag["stop"] = True

    # Signals can only be handled in the main thread (the CLI and job subprocesses; not a test's worker thread).
    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
    try:
        if cfg.output.push_to:  # who pushes where is settled before any data or weights are loaded
            from .config import default_run_name
            from .hub import check_push_access

            cfg.output.push_to = check_push_access(cfg.output.push_to, token, default_run_name(cfg))
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt = _checkpoint_to_resume(cfg, resume, token, writer)
        if is_main_process():
            cfg.save(run_dir / "config.yaml")
        pusher = _checkpoint_pusher(cfg, token, writer) if cfg.output.push_to and cfg.output.push_checkpoints else None
        trainer, report, hw = build_trainer(cfg, token, callbacks=[_events_callback(writer, stop_flag, pusher)])
        eval_ds = trainer.eval_dataset
        trainable, total = trainer.model.get_nb_trainable_parameters()
        max_steps = _planned_steps(trainer)
        writer.emit("run_started", config=cfg.to_dict(), versions=library_versions(), hardware=hw.describe(),
                    trainable_params=trainable, total_params=total, trainable_pct=round(100 * trainable / total, 4),
                    dataset=report.to_dict(), max_steps=max_steps, resumed_from=str(ckpt) if ckpt else None)
        result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        step = trainer.state.global_step
        cancelled = bool(stop_flag.get("stop"))
        metrics = {"train_loss": result.training_loss, "train_runtime_s": result.metrics.get("train_runtime"),
                   "steps": step, "tokens": trainer.state.num_input_tokens_seen or _last_tokens(trainer)}
        if eval_ds is not None and not cancelled:
            ev = trainer.evaluate()
            metrics.update(eval_loss=ev["eval_loss"], perplexity=_perplexity(ev["eval_loss"]))
        trainer.save_model(str(run_dir))  # adapter only (peft), even when stopped early: nothing is lost
        if is_main_process():
            trainer.processing_class.save_pretrained(str(run_dir))
            from .card import write_run_artifacts

            write_run_artifacts(cfg, run_dir, hw, metrics=metrics)
            if cfg.output.push_to and not cancelled:
                from .push import push_run

                push_run(run_dir, cfg.output.push_to, token, cfg.output.private, writer)
        writer.emit("run_finished", status="cancelled" if cancelled else "completed", step=step, metrics=metrics,
                    adapter=str(run_dir))
        if cancelled:
            raise Cancelled(f"stopped at step {step}; the adapter so far is saved in {run_dir}",
                            f"Continue with: python -m phi3space train {run_dir / 'config.yaml'} --resume")
        return run_dir
    except Cancelled:
        raise
    except Phi3SpaceError as exc:
        _fail(writer, exc, trainer, run_dir, metrics)
        raise
    except Exception as exc:
        oom = _as_oom(exc, cfg, run_dir)
        if oom is None:
            _fail(writer, Phi3SpaceError(f"training crashed: {type(exc).__name__}: {exc}",
                                         "This looks like a bug; the events file and logs have the details."), trainer, run_dir)
            raise
        _fail(writer, oom, trainer, run_dir)
        raise oom from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _planned_steps(trainer) -> int:
    args = trainer.args
    if args.max_steps and args.max_steps > 0:
        return args.max_steps
    per_epoch = math.ceil(len(trainer.get_train_dataloader()) / args.gradient_accumulation_steps)
    return max(1, math.ceil(per_epoch * args.num_train_epochs))


def _last_tokens(trainer) -> int | None:
    for entry in reversed(trainer.state.log_history):
        if "num_tokens" in entry:
            return int(entry["num_tokens"])
    return None


def _as_oom(exc: Exception, cfg: RunConfig, run_dir: Path | None = None) -> OutOfMemory | None:
    import torch

    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        hint = ("Lower training.batch_size (raise grad_accum to keep the effective batch), lower training.max_length"
                + (", or use model.method: qlora." if cfg.model.method == "lora" else "."))
        if run_dir is not None and latest_checkpoint(run_dir) is not None:
            hint += " Then add --resume to continue from the last checkpoint."
        return OutOfMemory("the GPU ran out of memory", hint)
    return None


def _fail(writer: EventWriter, exc: Phi3SpaceError, trainer, run_dir: Path, metrics: dict | None = None) -> None:
    step = trainer.state.global_step if trainer is not None else 0
    writer.emit("error", kind=exc.kind, message=exc.message, hint=exc.hint)
    adapter = str(run_dir) if (run_dir / "adapter_model.safetensors").exists() else None
    writer.emit("run_finished", status="failed", step=step, metrics=metrics or {}, adapter=adapter)
