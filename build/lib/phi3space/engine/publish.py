"""Publishing a training run: every Hub call the training recipe (``training``) makes about its output is here.

``Destination.open`` (set-up) settles where the adapter goes (``output.push_to``, 'auto' resolved) and proves write
access before any data or weights load; ``fetch_checkpoint`` brings back the newest pushed checkpoint for --resume;
``checkpoint_pusher`` pushes each checkpoint as training saves it; ``publish`` (the end) saves the adapter and its
tokenizer, renders the card once with the final metrics and pushes them together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from phi3space.config import RunConfig
from phi3space.engine.progress import is_main_process
from phi3space.errors import Phi3SpaceError
from phi3space.run import EventWriter, RunDir


@dataclass
class Destination:
    """Where a run's adapter goes, and the run's dealings with it."""

    cfg: RunConfig
    run: RunDir
    token: str | None
    writer: EventWriter
    repo_id: str | None  # the Hub repo the adapter is pushed to; None: it stays in the run folder

    @classmethod
    def open(cls, cfg: RunConfig, run: RunDir, token: str | None, writer: EventWriter) -> Destination:
        """The run's destination, with ``output.push_to: auto`` resolved (and saved in ``cfg``) and write access
        proven.

        Raises:
            AuthError, HubError: no token, no write access, or the Hub cannot be reached.
        """
        repo_id = None
        if cfg.output.push_to:
            from phi3space.config import auto_repo_name
            from phi3space.hub.access import check_push_access

            repo_id = cfg.output.push_to = check_push_access(cfg.output.push_to, token, auto_repo_name(cfg),
                                                             cfg.output.private)
        return cls(cfg, run, token, writer, repo_id)

    @property
    def pushes_checkpoints(self) -> bool:
        """Each checkpoint also goes to the repo's checkpoints branch (so that --resume finds it elsewhere)."""
        return bool(self.repo_id and self.cfg.output.push_checkpoints)

    def fetch_checkpoint(self) -> Path | None:
        """The newest checkpoint on the repo's checkpoints branch, downloaded into the run folder; None if none."""
        if not self.pushes_checkpoints:
            return None
        from phi3space.hub.push import fetch_checkpoint

        ckpt = fetch_checkpoint(self.repo_id, self.run, self.token)
        if ckpt is not None:
            self.writer.emit("log", message=f"resuming from {ckpt.name} downloaded from {self.repo_id} (branch checkpoints)")
        return ckpt

    def checkpoint_pusher(self) -> Callable[[Path], None] | None:
        """What pushes each saved checkpoint off the machine (a failed push is reported, training goes on); None
        when checkpoints stay here."""
        if not self.pushes_checkpoints:
            return None
        from phi3space.hub.push import push_checkpoint

        def push(path: Path) -> None:
            try:
                push_checkpoint(path, self.repo_id, self.token, self.cfg.output.private, self.writer,
                                keep=self.cfg.training.save_total_limit)
            except Phi3SpaceError as exc:
                self.writer.emit("log", message=f"warning: {path.name} was not pushed: {exc.message}")

        return push

    def publish(self, trainer, metrics: dict, cancelled: bool) -> None:
        """Save the adapter (also when stopped early: nothing is lost) and its tokenizer, render the card once with
        the final ``metrics``, and push that card with the adapter (not for a cancelled run).

        Raises:
            Phi3SpaceError: the push failed (the message says where the adapter is kept and how to push it later).
        """
        run, cfg = self.run, self.cfg
        trainer.save_model(str(run.path))  # adapter only (peft)
        if not is_main_process():
            return
        from phi3space.hub.access import base_license
        from phi3space.hub.card import write_card
        from phi3space.hub.records import job_record

        trainer.processing_class.save_pretrained(str(run.path))
        pushes = bool(self.repo_id) and not cancelled
        held = self.check_general_skills(trainer) if pushes and cfg.output.general_check else False
        license = base_license(cfg.model.base, self.token) if self.repo_id else None
        status = "cancelled" if cancelled else "completed"
        record = job_record(status, trainer.state.global_step, trainer.state.max_steps, metrics)
        write_card(cfg, run, license=license, repo_id=self.repo_id, metrics=metrics, record=record)
        if pushes and not held:
            from phi3space.hub.push import upload_adapter

            try:
                upload_adapter(run, self.repo_id, self.token, cfg.output.private, self.writer)
            except Phi3SpaceError as exc:
                raise type(exc)(f"push to {self.repo_id} failed: {exc.message}; the adapter is kept in {run.path}",
                                f"Push it later with: python -m phi3space push {run.path}") from None


    def check_general_skills(self, trainer) -> bool:
        """Ask base and adapter the general questions (phi3space.engine.general) and report it; True when the push
        is held: the adapter lost more than output.general_margin and output.push_if_worse is off."""
        from phi3space.engine.general import general_check, verdict

        cfg, writer = self.cfg, self.writer
        writer.emit("log", message="checking general skills before the push: base and adapter answer the general "
                                   "questions")
        model = trainer.model.eval()
        result = general_check(model, trainer.processing_class, cfg.output.general_margin)
        said = verdict(result)
        lost = [f"{e['question']} (base: {e['base']['reply'][:60]!r}; adapter: {e['adapter']['reply'][:60]!r})"
                for e in result["examples"] if e["id"] in result["lost"]]
        writer.emit("general_check", verdict=said, lost_questions=lost, **result)
        if not result["worse"]:
            return False
        if cfg.output.push_if_worse:
            writer.emit("log", message=f"warning: {said}; pushing anyway (output.push_if_worse)")
            return False
        writer.emit("push_held", message=f"{said}: the push to {self.repo_id} is held",
                    hint=f"Read the lost questions; to push it anyway: python -m phi3space push {self.run.path} "
                         "(the page: Push anyway), or train with --push-anyway.")
        return True
