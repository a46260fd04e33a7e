"""A run's state: ``RunState`` folds a run's events (phi3space.run writes and reads them) into what every view asks:
status, step, losses, metrics, error, where the adapter is, and what can be done next (resume, chat, push again).
The one place events are folded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FINAL = ("completed", "failed", "cancelled")


@dataclass
class RunState:
    """What a run's events say so far. ``status`` is queued until run_started, then running, then final."""

    status: str = "queued"
    step: int = 0
    max_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    eta_s: float | None = None
    tokens_per_s: float | None = None
    train_losses: list = field(default_factory=list)  # (step, loss)
    eval_losses: list = field(default_factory=list)  # (step, eval loss)
    train_rewards: list = field(default_factory=list)  # a DPO run's (step, reward accuracy, reward margin)
    eval_rewards: list = field(default_factory=list)  # the same, on the eval pairs
    metrics: dict = field(default_factory=dict)  # the run_finished metrics
    error: dict | None = None  # {kind, message, hint}
    adapter: str | None = None  # the local folder holding the adapter, once the run ended with one
    adapter_repo: str | None = None  # the Hub repo the adapter was pushed to (never a checkpoint push)
    adapter_url: str | None = None
    checkpoint: str | None = None  # the newest checkpoint saved in the run folder
    checkpoint_url: str | None = None  # the Hub branch the newest checkpoint was pushed to
    model_url: str | None = None  # a merge job's merged model (an export job's GGUF repo), once pushed
    examples: list = field(default_factory=list)  # an eval job's rows: prompt, reference, base and adapter replies
    evaluation: dict | None = None  # an eval job's results: {rows, dataset, base: {...}, adapter: {...}}
    exported: list = field(default_factory=list)  # an export job's files (GGUF, Modelfile)
    general: dict | None = None  # the general-skills check before the push: phi3space.engine.general's result
    push_held: str | None = None  # why the push was held (the adapter got worse at general skills): "Push anyway"
    plan: dict | None = None  # a plan job's measured plan (phi3space.jobs.plan.make_plan's JSON)
    hardware: str = ""
    versions: dict = field(default_factory=dict)  # this app's and the training libraries' versions (run_started)
    started: float | None = None
    finished: float | None = None

    @property
    def final(self) -> bool:
        """The run has ended: completed, failed or cancelled."""
        return self.status in FINAL

    @property
    def has_adapter(self) -> bool:
        """It ended with an adapter to chat with, merge or push: in its folder, or on the Hub."""
        return self.status in ("completed", "cancelled") and bool(self.adapter or self.adapter_repo)

    @property
    def can_resume(self) -> bool:
        """It failed or was stopped after saving a checkpoint (here, or pushed to its repo's checkpoints branch)."""
        return self.status in ("failed", "cancelled") and bool(self.checkpoint or self.checkpoint_url)

    @property
    def can_chat(self) -> bool:
        """An adapter to chat with: a finished run's, or a trained one whose push is pending (it is on this disk)."""
        return self.has_adapter or self.push_pending

    @property
    def pushed(self) -> bool:
        """The adapter was pushed to a Hub repo."""
        return bool(self.adapter_repo)

    @property
    def push_pending(self) -> bool:
        """It trained and saved its adapter, but the push failed (Hub down, sign-in expired): "Push again"; or it was
        held because the adapter got worse at general skills: "Push anyway"."""
        if self.push_held:
            return self.status == "completed" and bool(self.adapter) and not self.pushed
        return (self.status == "failed" and bool(self.adapter) and not self.pushed
                and (self.error or {}).get("kind") in ("hub", "auth"))

    def fold(self, e: dict) -> None:
        """Take one more event ``e`` into the state (events in the order they were written)."""
        kind = e.get("type")
        if kind == "run_started":  # also a resumed run: what an earlier attempt ended with no longer holds
            self.status, self.error, self.adapter, self.finished = "running", None, None, None
            self.examples, self.evaluation, self.general, self.push_held = [], None, None, None
            self.max_steps = e.get("max_steps")
            self.hardware = e.get("hardware") or self.hardware
            self.versions = e.get("versions") or self.versions
            self.started = e.get("time")
        elif kind == "progress":
            for k in ("step", "max_steps", "loss", "eta_s", "epoch", "tokens_per_s"):
                if e.get(k) is not None:
                    setattr(self, k, e[k])
            if e.get("loss") is not None and e.get("step") is not None:
                self.train_losses.append((e["step"], e["loss"]))
            if e.get("reward_accuracy") is not None and e.get("step") is not None:
                self.train_rewards.append((e["step"], e["reward_accuracy"], e.get("reward_margin")))
        elif kind == "eval":
            self.eval_loss = e.get("eval_loss")
            if e.get("eval_loss") is not None and e.get("step") is not None:
                self.eval_losses.append((e["step"], e["eval_loss"]))
            if e.get("eval_reward_accuracy") is not None and e.get("step") is not None:
                self.eval_rewards.append((e["step"], e["eval_reward_accuracy"], e.get("eval_reward_margin")))
        elif kind == "checkpoint":
            self.checkpoint = e.get("path") or self.checkpoint
        elif kind == "push":
            if e.get("what", "adapter") == "adapter":
                self.adapter_repo, self.adapter_url, self.push_held = e.get("repo_id"), e.get("url"), None
            elif e.get("what") in ("model", "gguf"):
                self.model_url = e.get("url")
            elif e.get("what") == "card":
                pass  # an eval job's results on the adapter's card: the adapter is where it was
            else:
                self.checkpoint_url = e.get("url")
        elif kind == "example":
            self.examples.append({k: e.get(k) for k in ("index", "prompt", "reference", "base", "adapter")})
        elif kind == "evaluation":
            # (a Jobs run's mirrored events also carry the job's id and their number in its log)
            self.evaluation = {k: v for k, v in e.items() if k not in ("type", "time", "task", "job", "seq")}
        elif kind == "general_check":
            self.general = {k: v for k, v in e.items() if k not in ("type", "time", "job", "seq")}
        elif kind == "push_held":
            self.push_held = e.get("message")
        elif kind == "plan":
            self.plan = {k: v for k, v in e.items() if k not in ("type", "time", "task", "job", "seq")}
        elif kind == "export":
            self.exported = list(e.get("files") or [])
        elif kind == "error":
            self.error = {k: e.get(k) for k in ("kind", "message", "hint")}
        elif kind == "run_finished":
            self.status = e.get("status") if e.get("status") in FINAL else "failed"
            self.adapter = e.get("adapter")
            self.step = e.get("step", self.step)
            self.metrics = e.get("metrics") or {}
            self.finished = e.get("time")
            if self.status != "failed":
                self.error = None

    @classmethod
    def from_events(cls, events: list[dict]) -> RunState:
        """The state after ``events``, folded in order."""
        state = cls()
        for e in events:
            state.fold(e)
        return state

    def results(self, metrics: dict | None = None) -> dict:
        """Final metrics (the run_finished ones, or ``metrics`` when the run is just finishing), with the final
        and best losses of the curve."""
        out = {**self.metrics, **{k: v for k, v in (metrics or {}).items() if v is not None}}
        if self.train_losses:
            out["final_train_loss"] = self.train_losses[-1][1]
        if self.eval_losses:
            out.setdefault("eval_loss", self.eval_losses[-1][1])
            out["best_eval_loss"] = min(loss for _, loss in self.eval_losses)
        if self.train_rewards:
            out["final_reward_accuracy"], out["final_reward_margin"] = self.train_rewards[-1][1:]
        if self.eval_rewards:
            out.setdefault("eval_reward_accuracy", self.eval_rewards[-1][1])
            out.setdefault("eval_reward_margin", self.eval_rewards[-1][2])
        return out
