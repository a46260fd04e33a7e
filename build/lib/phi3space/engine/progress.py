"""How a training process reports while it trains, whatever the objective: only the main process (rank 0) writes;
the events callback turns the trainer's logs into progress, eval and checkpoint events and honours Stop (and a loss
that turns NaN); perplexity from a loss.
"""

from __future__ import annotations

import math
import os
import time

from phi3space.engine.memory import peak_memory_bytes
from phi3space.run import EventWriter, RunDir


def is_main_process() -> bool:
    """This process writes the run's events and files (rank 0, or the only process)."""
    return int(os.environ.get("RANK", "0")) == 0


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
            if stop_flag.get("stop") and not stop_flag.get("diverged"):
                control.should_training_stop = True
                control.should_save = True  # a checkpoint to --resume from

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            now = time.time()
            if any(k in logs and not math.isfinite(logs[k]) for k in ("loss", "grad_norm")):
                # The weights are ruined from here on: stop, and keep no checkpoint of them.
                stop_flag["diverged"] = state.global_step
                control.should_training_stop, control.should_save = True, False
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
                            reward_accuracy=logs.get("rewards/accuracies"), reward_margin=logs.get("rewards/margins"),
                            elapsed_s=round(elapsed, 2), eta_s=round(eta, 1) if eta is not None else None,
                            peak_memory_bytes=peak_memory_bytes())
            elif "eval_loss" in logs:
                writer.emit("eval", step=state.global_step, eval_loss=logs["eval_loss"],
                            eval_token_accuracy=logs.get("eval_mean_token_accuracy"), **eval_scores(logs))

        def on_save(self, args, state, control, **kw):
            path = RunDir(args.output_dir).checkpoint(state.global_step)
            writer.emit("checkpoint", step=state.global_step, path=str(path))
            if on_checkpoint is not None and is_main_process():
                on_checkpoint(path)

    return EventsCallback()


def eval_scores(logs: dict) -> dict:
    """What an evaluation scores beside its loss: a DPO run's reward accuracy and margin (trl's
    ``eval_rewards/*``), else the perplexity (which a preference loss has none of)."""
    if "eval_rewards/accuracies" in logs:
        return {"eval_reward_accuracy": logs["eval_rewards/accuracies"],
                "eval_reward_margin": logs.get("eval_rewards/margins")}
    return {"perplexity": _perplexity(logs.get("eval_loss"))}


def _perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    return round(math.exp(loss), 4) if loss < 50 else float("inf")
