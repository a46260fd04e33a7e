"""A fine-tuning run in three stages, as a recipe: ``preflight`` (every cheap check, then data and tokenizer),
``fit`` (the model and trl's SFTTrainer or DPOTrainer), ``finish`` (final metrics, adapter, card, push). Everything is reported
through the run's events.

Order matters: cheap checks first (run folder, Hub access, base model config, data), then the tokenizer (token
stats), then the model, so that a user's mistake is reported in seconds, before gigabytes of weights are loaded.

The objective's own trainer set-up is in ``sft`` (trl's SFTConfig and SFTTrainer, the LoRA settings) and ``dpo``
(DPOConfig, DPOTrainer, the starting adapter; its pairs in ``pairs``); the events a trainer reports as it goes, in
``progress``.
"""

from __future__ import annotations

import errno
import math
import shutil
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from phi3space.config import RunConfig
from phi3space.engine import data as data_mod
from phi3space.engine.dpo import check_init_adapter, dpo_trainer, with_init_adapter
from phi3space.engine.memory import check_memory
from phi3space.engine.modeling import Hardware, check_base, detect_hardware, load_model
from phi3space.engine.outdir import Claim, claim
from phi3space.engine.pairs import prepare_pairs
from phi3space.engine.progress import _events_callback, eval_scores, is_main_process
from phi3space.engine.sft import sft_trainer
from phi3space.errors import Cancelled, ConfigError, DiskFull, Diverged, OutOfMemory, Phi3SpaceError
from phi3space.run import EventWriter, RunDir


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "huggingface_hub"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


@dataclass
class Preflight:
    """What the cheap checks settled before any weights load."""

    run: RunDir
    repo_id: str | None  # where the adapter will be pushed (resolved from 'auto'), None to keep it local
    checkpoint: Path | None  # what --resume continues from
    data: data_mod.Prepared
    hardware: Hardware
    init_adapter: Path | None = None  # the adapter the run starts from (model.init_adapter), downloaded if need be


@dataclass
class Fitted:
    metrics: dict
    cancelled: bool


@contextmanager
def stop_requests():
    """Stop (SIGTERM, Ctrl-C) sets a flag that the trainer checks after each step; it then saves and ends as
    "cancelled". A second Ctrl-C does not wait. Signals can only be handled in the main thread (the CLI and job
    processes), so elsewhere (a test's worker thread) nothing is installed."""
    flag: dict = {}

    def on_signal(signum, frame):
        if flag.get("stop") and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = True

    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def preflight(cfg: RunConfig, run: RunDir, resume: bool, token: str | None, writer: EventWriter) -> Preflight:
    """Who pushes where, what to resume from, the base model's config, the data and the tokenizer."""
    repo_id = None
    if cfg.output.push_to:  # settled before any data or weights are loaded
        from phi3space.config import auto_repo_name
        from phi3space.hub.access import check_push_access

        repo_id = cfg.output.push_to = check_push_access(cfg.output.push_to, token, auto_repo_name(cfg),
                                                         cfg.output.private)
    run.path.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        run.reserve()  # the run's last word gets said even if the disk fills up
    ckpt = _checkpoint_to_resume(cfg, run, resume, token, writer)
    if is_main_process():
        cfg.save(run.config)
    check_base(cfg.model.base, token)  # a wrong or unreachable model fails before the data is read
    init_adapter = check_init_adapter(cfg, token)
    if cfg.training.objective == "dpo":
        prepared = prepare_pairs(cfg.data, cfg.model.base, cfg.training.max_length, cfg.training.seed, token, sample=None)
    else:
        prepared = data_mod.prepare_for_training(cfg.data, cfg.model.base, cfg.training.max_length, cfg.training.seed,
                                                 token)
    hw = detect_hardware(cfg.model.attn_implementation)
    if hw.device == "cpu":  # before the model loads: a small machine refuses rather than being killed
        check_memory(cfg.model.base, "nf4" if cfg.model.method == "qlora" else hw.dtype, "training", token,
                     training=True)
    return Preflight(run, repo_id, ckpt, prepared, hw, init_adapter)


def build_trainer(cfg: RunConfig, pre: Preflight, token: str | None = None, callbacks=()):
    """The base model (LoRA or 4-bit), with the starting adapter if any, and the objective's trl trainer (SFT or
    DPO) over the prepared data."""
    model = load_model(cfg.model.base, cfg.model.method, pre.hardware, token,
                       cfg.training.gradient_checkpointing and pre.hardware.device == "cuda")
    model = with_init_adapter(model, pre.init_adapter)
    make = dpo_trainer if cfg.training.objective == "dpo" else sft_trainer
    return make(cfg, model, pre.data, pre.hardware, callbacks)


def fit(cfg: RunConfig, pre: Preflight, trainer, writer: EventWriter, stop: dict) -> Fitted:
    """Train (from the checkpoint, when resuming) and evaluate; the trainer stops after the step when asked."""
    trainable, total = trainer.model.get_nb_trainable_parameters()
    max_steps = _planned_steps(trainer)
    earlier = pre.run.state()  # before this attempt's events
    writer.emit("run_started", config=cfg.to_dict(), versions=library_versions(), hardware=pre.hardware.describe(),
                trainable_params=trainable, total_params=total, trainable_pct=round(100 * trainable / total, 4),
                dataset=pre.data.report.to_dict(), max_steps=max_steps,
                resumed_from=str(pre.checkpoint) if pre.checkpoint else None)
    if pre.checkpoint and pre.run.checkpoint_progress(pre.checkpoint) >= max_steps:
        # Training had finished (its push failed, say): no step past the end, straight on to evaluation and saving.
        writer.emit("log", message=f"{pre.checkpoint.name} already holds all {max_steps} steps: finishing without training")
        _load_checkpoint_adapter(trainer, pre.checkpoint)
        trainer.state.global_step = max_steps
        metrics = {**earlier.metrics, "steps": max_steps}
        cancelled = False
    else:
        result = trainer.train(resume_from_checkpoint=str(pre.checkpoint) if pre.checkpoint else None)
        if stop.get("diverged") is not None:
            raise Diverged(f"the loss became NaN or infinite at step {stop['diverged']}: training stopped, no adapter "
                           "was saved from it",
                           "Lower training.learning_rate (e.g. 1e-4) or training.max_length; "
                           + ("--resume continues from the last checkpoint before it." if pre.run.latest_checkpoint()
                              else "then start again."))
        cancelled = bool(stop.get("stop"))
        metrics = {"train_loss": result.training_loss, "train_runtime_s": result.metrics.get("train_runtime"),
                   "steps": trainer.state.global_step,
                   "tokens": trainer.state.num_input_tokens_seen or _last_tokens(trainer)}
    if trainer.eval_dataset is not None and not cancelled:
        ev = trainer.evaluate()
        metrics.update(eval_loss=ev["eval_loss"], **eval_scores(ev))
    return Fitted(metrics, cancelled)


def _load_checkpoint_adapter(trainer, checkpoint: Path) -> None:
    """Put a checkpoint's adapter weights into the trainer's model (peft's own state-dict loader)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(trainer.model, load_file(str(RunDir(checkpoint).adapter_weights)))


def finish(cfg: RunConfig, pre: Preflight, trainer, fitted: Fitted, token: str | None, writer: EventWriter) -> None:
    """Save the adapter (also when stopped early: nothing is lost), render the card once with the final metrics,
    push that card with the adapter, and write the run's last word."""
    run = pre.run
    trainer.save_model(str(run.path))  # adapter only (peft)
    if is_main_process():
        from phi3space.hub.access import base_license
        from phi3space.hub.card import write_card
        from phi3space.hub.records import job_record

        trainer.processing_class.save_pretrained(str(run.path))
        license = base_license(cfg.model.base, token) if pre.repo_id else None
        status = "cancelled" if fitted.cancelled else "completed"
        record = job_record(status, trainer.state.global_step, trainer.state.max_steps, fitted.metrics)
        write_card(cfg, run, license=license, repo_id=pre.repo_id, metrics=fitted.metrics, record=record)
        if pre.repo_id and not fitted.cancelled:
            from phi3space.hub.push import upload_adapter

            try:
                upload_adapter(run, pre.repo_id, token, cfg.output.private, writer)
            except Phi3SpaceError as exc:
                raise type(exc)(f"push to {pre.repo_id} failed: {exc.message}; the adapter is kept in {run.path}",
                                f"Push it later with: python -m phi3space push {run.path}") from None
    writer.finish("cancelled" if fitted.cancelled else "completed", step=trainer.state.global_step,
                  metrics=fitted.metrics, adapter=str(run.path))


def _checkpoint_to_resume(cfg: RunConfig, run: RunDir, resume: bool, token: str | None, writer: EventWriter) -> Path | None:
    """The checkpoint --resume continues from: the newest local one, else the newest on the Hub's checkpoints branch."""
    if not resume:
        return None
    ckpt = run.latest_checkpoint()
    for partial in run.partial_checkpoints() if is_main_process() else []:  # never resumed from
        writer.emit("log", message=f"{partial.name} is incomplete (its save was interrupted): removed; "
                                   f"resuming from {ckpt.name if ckpt else 'an earlier checkpoint'}")
        shutil.rmtree(partial, ignore_errors=True)
    if ckpt is None and cfg.output.push_to and cfg.output.push_checkpoints:
        from phi3space.hub.push import fetch_checkpoint

        ckpt = fetch_checkpoint(cfg.output.push_to, run, token)
        if ckpt is not None:
            writer.emit("log", message=f"resuming from {ckpt.name} downloaded from {cfg.output.push_to} (branch checkpoints)")
    if ckpt is None:
        where = f" or on the Hub ({cfg.output.push_to}, branch checkpoints)" if cfg.output.push_checkpoints and cfg.output.push_to else ""
        raise ConfigError([f"--resume: no checkpoint in {run.path}{where}"],
                          "Start without --resume, or point output.dir at the run folder you want to continue.")
    return ckpt


def _checkpoint_pusher(cfg: RunConfig, repo_id: str, token: str | None, writer: EventWriter):
    """Push each saved checkpoint off the machine; a failed push is reported, training goes on."""
    from phi3space.hub.push import push_checkpoint

    def push(path: Path) -> None:
        try:
            push_checkpoint(path, repo_id, token, cfg.output.private, writer, keep=cfg.training.save_total_limit)
        except Phi3SpaceError as exc:
            writer.emit("log", message=f"warning: {path.name} was not pushed: {exc.message}")

    return push


def train(cfg: RunConfig, resume: bool = False, token: str | None = None, echo=None) -> Path:
    """Run one fine-tuning job: preflight, fit, finish. Returns the run folder holding the adapter.

    Raises:
        Phi3SpaceError: for every user mistake (already reported as an ``error`` event).
        Cancelled: stopped by a signal (the adapter so far and a checkpoint are saved).
    """
    run = RunDir(cfg.output.dir)
    # Refused before anything is written: someone's folder, or a run's events and adapter, stay as they are.
    with claim(run, resume, hold=is_main_process()) as held:
        done = run.state()
        if resume and done.status == "completed" and (cfg.training.max_steps or 0) <= done.step:
            raise ConfigError([f"--resume: the run in {run.path} already completed its {done.step} steps"],
                              f"Nothing to continue: push it with `python -m phi3space push {run.path}`, train further "
                              f"with --set training.max_steps=MORE, or start a new run in another folder.")
        trainer, fitted = _run(cfg, run, resume, token, echo, held)
    if fitted.cancelled:
        step = trainer.state.global_step
        raise Cancelled(f"stopped at step {step}; the adapter so far is saved in {run.path}",
                        f"Continue with: python -m phi3space train {run.config} --resume")
    return run.path


def _run(cfg: RunConfig, run: RunDir, resume: bool, token: str | None, echo, held: Claim):
    """Preflight, fit and finish in a held folder; a run refused before its trainer exists leaves nothing in a
    folder that was empty."""
    writer = run.writer(enabled=is_main_process(), echo=echo)
    trainer = fitted = None
    with stop_requests() as stop:
        try:
            pre = preflight(cfg, run, resume, token, writer)
            pusher = _checkpoint_pusher(cfg, pre.repo_id, token, writer) if pre.repo_id and cfg.output.push_checkpoints else None
            trainer = build_trainer(cfg, pre, token, callbacks=[_events_callback(writer, stop, pusher)])
            fitted = fit(cfg, pre, trainer, writer, stop)
            finish(cfg, pre, trainer, fitted, token, writer)
        except Phi3SpaceError as exc:
            _fail(writer, exc, trainer, fitted, run)
            if trainer is None:
                held.undo()
            raise
        except Exception as exc:
            known = _as_oom(exc, cfg, run) or _as_disk_full(exc, run)
            if known is None:
                _fail(writer, Phi3SpaceError(f"training crashed: {type(exc).__name__}: {exc}",
                                             "This looks like a bug; the events file and logs have the details."),
                      trainer, fitted, run)
                raise
            _fail(writer, known, trainer, fitted, run)
            if trainer is None:
                held.undo()
            raise known from None
    return trainer, fitted


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


def _as_oom(exc: Exception, cfg: RunConfig, run: RunDir) -> OutOfMemory | None:
    import torch

    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        hint = ("Lower training.batch_size (raise grad_accum to keep the effective batch), lower training.max_length"
                + (", or use model.method: qlora." if cfg.model.method == "lora" else "."))
        if run.latest_checkpoint() is not None:
            hint += " Then add --resume to continue from the last checkpoint."
        return OutOfMemory("the GPU ran out of memory", hint)
    return None


def _as_disk_full(exc: Exception, run: RunDir) -> DiskFull | None:
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in str(exc):
        hint = "Free some space"
        if run.latest_checkpoint() is not None:
            hint += f", then continue with --resume (from {run.latest_checkpoint().name})"
        return DiskFull(f"the disk is full (while writing the run in {run.path})", hint + ".")
    return None


def _fail(writer: EventWriter, exc: Phi3SpaceError, trainer, fitted: Fitted | None, run: RunDir) -> None:
    """The error and the run's last word: the step reached and, when one was saved, where the adapter is. When even
    that cannot be written (a full disk), the message still reaches the caller, and the job supervisor writes the
    last word once it sees the process end."""
    step = trainer.state.global_step if trainer is not None else 0
    try:
        writer.finish("failed", {"kind": exc.kind, "message": exc.message, "hint": exc.hint}, step=step,
                      metrics=fitted.metrics if fitted else {}, adapter=str(run.path) if run.has_adapter() else None)
    except OSError:
        pass
