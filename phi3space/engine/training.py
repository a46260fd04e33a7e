"""A fine-tuning run as one linear recipe, in the manner of torchtune's single-device LoRA recipe and litgpt's
finetune/lora.py: ``train`` reads top to bottom.

1. set-up: ``preflight`` (every cheap check, then the data and the tokenizer), then ``build_trainer`` (the model and
   the objective's trl trainer). Order matters: the run folder, the Hub destination, the base model's config and the
   data come first, so that a user's mistake is reported in seconds, before gigabytes of weights are loaded;
2. train: ``fit`` (from a checkpoint when resuming), then the evaluation;
3. publish: ``publish.Destination`` saves the adapter, renders the card and pushes them (all the run's Hub work is
   there: the destination checked at set-up, checkpoints pushed while training, the adapter at the end); then the
   run's last word;
4. clean-up: ``failures`` turns whatever stopped the run into its last word, and leaves a folder that was empty
   empty when the run was refused before its trainer existed.

What each objective does (its data, its trainer) is in its own module, found through ``objectives``; the events a
trainer reports as it goes, in ``progress``.
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
from phi3space.engine.data import Prepared
from phi3space.engine.init_adapter import check_init_adapter, with_init_adapter
from phi3space.engine.memory import check_memory
from phi3space.engine.modeling import Hardware, check_base, detect_hardware, load_model, quiet_libraries
from phi3space.engine.objectives import objective_of
from phi3space.engine.outdir import Claim, claim
from phi3space.engine.progress import _events_callback, eval_scores, is_main_process
from phi3space.engine.publish import Destination
from phi3space.errors import Cancelled, ConfigError, DiskFull, Diverged, OutOfMemory, Phi3SpaceError
from phi3space.run import EventWriter, RunDir, checkpoint_step


def train(cfg: RunConfig, resume: bool = False, token: str | None = None, echo=None) -> Path:
    """Run one fine-tuning job: set-up, train, publish (clean-up on the way out). Returns the run folder holding
    the adapter.

    Raises:
        Phi3SpaceError: for every user mistake (already reported as an ``error`` event).
        Cancelled: stopped by a signal (the adapter so far and a checkpoint are saved).
    """
    run = RunDir(cfg.output.dir)
    # Refused before anything is written: someone's folder, or a run's events and adapter, stay as they are.
    with claim(run, resume, hold=is_main_process()) as held:
        _refuse_a_finished_run(cfg, run, resume)
        writer = run.writer(enabled=is_main_process(), echo=echo)
        with stop_requests() as stop, failures(cfg, run, writer, held) as reached:
            pre = preflight(cfg, run, resume, token, writer)  # 1. set-up: cheap checks and data, then the model
            callbacks = [_events_callback(writer, stop, pre.destination.checkpoint_pusher())]
            trainer, fitted = fit_in_memory(cfg, pre, token, callbacks, writer, stop, reached)  # 2. train, evaluate
            pre.destination.publish(trainer, fitted.metrics, fitted.cancelled)  # 3. adapter, card, Hub
            writer.finish(fitted.status, step=trainer.state.global_step, metrics=fitted.metrics, adapter=str(run.path))
    if fitted.cancelled:
        raise Cancelled(f"stopped at step {trainer.state.global_step}; the adapter so far is saved in {run.path}",
                        f"Continue with: python -m phi3space train {run.config} --resume")
    return run.path


# ---------------------------------------------------------------- 1. set-up

@dataclass
class Preflight:
    """What the cheap checks settled before any weights load."""

    run: RunDir
    destination: Destination  # where the adapter goes (the Hub repo, or nowhere but the run folder)
    checkpoint: Path | None  # what --resume continues from
    data: Prepared
    hardware: Hardware
    init_adapter: Path | None = None  # the adapter the run starts from (model.init_adapter), downloaded if need be


def preflight(cfg: RunConfig, run: RunDir, resume: bool, token: str | None, writer: EventWriter) -> Preflight:
    """Who pushes where, what to resume from, the base model's config, the data (as the objective prepares it) and
    the tokenizer."""
    destination = Destination.open(cfg, run, token, writer)  # settled before any data or weights are loaded
    quiet_libraries()  # only now: a run refused for its folder or its push answers before they load
    run.path.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        run.reserve()  # the run's last word gets said even if the disk fills up
    ckpt = _checkpoint_to_resume(cfg, run, destination, writer) if resume else None
    if is_main_process():
        cfg.save(run.config)
    check_base(cfg.model.base, token)  # a wrong or unreachable model fails before the data is read
    init_adapter = check_init_adapter(cfg, token)
    prepared = objective_of(cfg).rows_to_train(cfg, token)
    if prepared.report.revision and prepared.report.revision != cfg.data.revision:
        cfg.data.revision = prepared.report.revision  # the commit read: the saved (and pushed) config repeats the run
        if is_main_process():
            cfg.save(run.config)
    hw = detect_hardware(cfg.model.attn_implementation)
    if hw.device == "cpu":  # before the model loads: a small machine refuses rather than being killed
        check_memory(cfg.model.base, "nf4" if cfg.model.method == "qlora" else hw.dtype, "training", token,
                     training=True)
    return Preflight(run, destination, ckpt, prepared, hw, init_adapter)


def build_trainer(cfg: RunConfig, pre: Preflight, token: str | None = None, callbacks=()):
    """The base model (LoRA or 4-bit), with the starting adapter if any, and the objective's trl trainer over the
    prepared data."""
    model = load_model(cfg.model.base, cfg.model.method, pre.hardware, token,
                       cfg.training.gradient_checkpointing and pre.hardware.device == "cuda")
    model = with_init_adapter(model, pre.init_adapter)
    if cfg.training.early_stopping_patience and pre.data.eval is not None:
        from transformers import EarlyStoppingCallback

        callbacks = [*callbacks, EarlyStoppingCallback(early_stopping_patience=cfg.training.early_stopping_patience)]
    return objective_of(cfg).trainer(cfg, model, pre.data, pre.hardware, callbacks)


def _refuse_a_finished_run(cfg: RunConfig, run: RunDir, resume: bool) -> None:
    done = run.state()
    if resume and done.status == "completed" and (cfg.training.max_steps or 0) <= done.step:
        raise ConfigError([f"--resume: the run in {run.path} already completed its {done.step} steps"],
                          f"Nothing to continue: push it with `python -m phi3space push {run.path}`, train further "
                          f"with --set training.max_steps=MORE, or start a new run in another folder.")


def _checkpoint_to_resume(cfg: RunConfig, run: RunDir, destination: Destination, writer: EventWriter) -> Path:
    """The checkpoint --resume continues from: the newest local one, else the newest on the Hub's checkpoints branch."""
    ckpt = run.latest_checkpoint()
    for partial in run.partial_checkpoints() if is_main_process() else []:  # never resumed from
        writer.emit("log", message=f"{partial.name} is incomplete (its save was interrupted): removed; "
                                   f"resuming from {ckpt.name if ckpt else 'an earlier checkpoint'}")
        shutil.rmtree(partial, ignore_errors=True)
    ckpt = ckpt or destination.fetch_checkpoint()
    if ckpt is None:
        where = f" or on the Hub ({cfg.output.push_to}, branch checkpoints)" if destination.pushes_checkpoints else ""
        raise ConfigError([f"--resume: no checkpoint in {run.path}{where}"],
                          "Start without --resume, or point output.dir at the run folder you want to continue.")
    return ckpt


# ---------------------------------------------------------------- 2. train

@dataclass
class Fitted:
    """What training left: the final metrics, and whether Stop ended it early."""

    metrics: dict
    cancelled: bool

    @property
    def status(self) -> str:
        """The run's final status: cancelled or completed."""
        return "cancelled" if self.cancelled else "completed"


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
        if not cancelled and trainer.state.global_step < max_steps and cfg.training.early_stopping_patience:
            metrics.update(_stopped_early(cfg, trainer, writer))
    if trainer.eval_dataset is not None and not cancelled:
        ev = trainer.evaluate()
        metrics.update(eval_loss=ev["eval_loss"], **eval_scores(ev))
    return Fitted(metrics, cancelled)


def _stopped_early(cfg: RunConfig, trainer, writer: EventWriter) -> dict:
    """Say that early stopping ended the run, and which checkpoint's adapter it kept (the trainer loaded it)."""
    best_step = checkpoint_step(Path(trainer.state.best_model_checkpoint or "").name)
    writer.emit("log", message=f"stopped early at step {trainer.state.global_step}: the eval loss did not improve for "
                               f"{cfg.training.early_stopping_patience} evaluations in a row; the adapter is the best "
                               f"one's, from step {best_step} (eval loss {trainer.state.best_metric:.4f})")
    return {"stopped_early_at": trainer.state.global_step, "best_step": best_step}


def fit_in_memory(cfg: RunConfig, pre: Preflight, token: str | None, callbacks: list, writer: EventWriter, stop: dict,
                  reached: Reached) -> tuple:
    """Build the trainer and fit; when that runs out of memory, once more with half the micro-batch and twice the
    accumulation (the same effective batch), from the last checkpoint if one was saved, and say so. Returns the
    trainer and what training left."""
    retried = False
    while True:
        reached.trainer = trainer = build_trainer(cfg, pre, token, callbacks)
        try:
            reached.fitted = fitted = fit(cfg, pre, trainer, writer, stop)
            return trainer, fitted
        except Exception as exc:
            if retried or _as_oom(exc, cfg, pre.run) is None or cfg.training.batch_size < 2:
                raise
        reached.trainer = trainer = None
        _smaller_batch(cfg, pre, writer)
        retried = True


def _smaller_batch(cfg: RunConfig, pre: Preflight, writer: EventWriter) -> None:
    """Halve the micro-batch, double the accumulation, give the memory back, and continue from the last checkpoint."""
    import gc

    import torch

    t = cfg.training
    before = f"micro-batch {t.batch_size} x accumulation {t.grad_accum}"
    t.batch_size, t.grad_accum = t.batch_size // 2, t.grad_accum * 2
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    pre.checkpoint = pre.run.latest_checkpoint() or pre.checkpoint
    if is_main_process():
        cfg.save(pre.run.config)  # the settings the run goes on with (the card and --resume read them)
    writer.emit("log", message=f"out of memory with {before}: trying once more with micro-batch {t.batch_size} x "
                               f"accumulation {t.grad_accum} (the same effective batch)"
                               + (f", from {pre.checkpoint.name}" if pre.checkpoint else ""))


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


def library_versions() -> dict[str, str]:
    """The versions of this app and of the libraries that train (reported in run_started and on the card, so that a
    run can be repeated)."""
    from importlib.metadata import PackageNotFoundError, version

    import phi3space

    out = {"phi3space": phi3space.__version__}
    for name in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "huggingface_hub"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _load_checkpoint_adapter(trainer, checkpoint: Path) -> None:
    """Put a checkpoint's adapter weights into the trainer's model (peft's own state-dict loader)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(trainer.model, load_file(str(RunDir(checkpoint).adapter_weights)))


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


# ---------------------------------------------------------------- 4. clean-up

@dataclass
class Reached:
    """How far a run got before it stopped: its trainer and what training left, once they exist."""

    trainer: object = None
    fitted: Fitted | None = None


@contextmanager
def failures(cfg: RunConfig, run: RunDir, writer: EventWriter, held: Claim):
    """Whatever stops the run becomes its last word: a user's mistake as it is, an out-of-memory or a full disk as
    a message with what to do, anything else as a crash (a bug keeps its traceback). A run refused before its
    trainer existed leaves nothing in a folder that was empty."""
    reached = Reached()
    try:
        yield reached
    except Phi3SpaceError as exc:
        _fail(writer, exc, reached, run)
        if reached.trainer is None:
            held.undo()
        raise
    except Exception as exc:
        known = _as_oom(exc, cfg, run) or _as_disk_full(exc, run)
        if known is None:
            _fail(writer, Phi3SpaceError(f"training crashed: {type(exc).__name__}: {exc}",
                                         "This looks like a bug; the events file and logs have the details."),
                  reached, run)
            raise
        _fail(writer, known, reached, run)
        if reached.trainer is None:
            held.undo()
        raise known from None


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


def _fail(writer: EventWriter, exc: Phi3SpaceError, reached: Reached, run: RunDir) -> None:
    """The error and the run's last word: the step reached and, when one was saved, where the adapter is. When even
    that cannot be written (a full disk), the message still reaches the caller, and the job supervisor writes the
    last word once it sees the process end."""
    step = reached.trainer.state.global_step if reached.trainer is not None else 0
    fitted = reached.fitted
    try:
        writer.finish("failed", {"kind": exc.kind, "message": exc.message, "hint": exc.hint}, step=step,
                      metrics=fitted.metrics if fitted else {}, adapter=str(run.path) if run.has_adapter() else None)
    except OSError:
        pass
