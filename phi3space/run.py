"""A run's folder and its state: the one module that knows the folder's layout and reads events.jsonl.

``RunDir`` names every file of a run (config, events, log, adapter, checkpoints, card, plot). ``events.jsonl`` is
the one contract between a training process and everything that shows it: one JSON object per line, append-only,
each with ``type`` and ``time``. ``RunState`` folds those events into what a view needs (status, step, losses,
metrics, error, where the adapter is). Every reader (CLI lines, web views, /job_status, the model card, the runs
table) asks this module; when a training process dies without a last word, the job supervisor appends it here too,
so the file stays the truth and survives a restart unchanged.
"""

from __future__ import annotations

import errno
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path
from typing import Any

from phi3space.errors import Cancelled, ModelError, Phi3SpaceError, scrub
from phi3space.state import FINAL, RunState  # noqa: F401  (RunState is read through RunDir.state)

EVENT_TYPES = ("run_started", "progress", "eval", "checkpoint", "push", "run_finished", "error", "log",
               "example", "evaluation", "export",  # an eval job's rows and results, an export's files
               "general_check", "push_held",  # a training's general-skills check before its push, a push it held
               "plan")  # a plan job's measured plan (phi3space.jobs.plan)
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint saved at ``step`` (the name trl's Trainer uses)."""
    return f"checkpoint-{step}"


def checkpoint_step(name: str) -> int | None:
    """12 for 'checkpoint-12' (or a path inside it, as on the Hub's checkpoints branch); None for anything else."""
    m = _CHECKPOINT.fullmatch(name.split("/")[0])
    return int(m.group(1)) if m else None


class RunDir:
    """The layout of one run folder. Nobody else builds a path inside it."""

    CONFIG = "config.yaml"
    EVENTS = "events.jsonl"
    LOG = "train.log"
    ADAPTER_WEIGHTS = "adapter_model.safetensors"
    ADAPTER_CONFIG = "adapter_config.json"
    CARD = "README.md"
    PLOT = "loss_curve.png"
    TOKENIZER_CONFIG = "tokenizer_config.json"
    RESERVE = ".last-word-reserve"  # room kept on the disk for the run's last word (see EventWriter.finish)
    TRAINER_STATE = "trainer_state.json"  # the Trainer writes it last into a checkpoint: its presence marks a whole one
    # What a pushed adapter repo holds: the adapter, its tokenizer, the resolved config, card and loss curve.
    PUSHED = [ADAPTER_WEIGHTS, ADAPTER_CONFIG, "tokenizer.json", TOKENIZER_CONFIG, "special_tokens_map.json",
              "chat_template.jinja", CONFIG, CARD, PLOT]

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    @property
    def config(self) -> Path:
        """The run's resolved config (config.yaml)."""
        return self.path / self.CONFIG

    @property
    def events(self) -> Path:
        """The run's event log (events.jsonl), what every view folds into a RunState."""
        return self.path / self.EVENTS

    @property
    def log(self) -> Path:
        """The job's output, stdout and stderr (train.log)."""
        return self.path / self.LOG

    @property
    def adapter_weights(self) -> Path:
        """The trained adapter's weights."""
        return self.path / self.ADAPTER_WEIGHTS

    @property
    def adapter_config(self) -> Path:
        """The trained adapter's peft config (it names the base model)."""
        return self.path / self.ADAPTER_CONFIG

    @property
    def card(self) -> Path:
        """The model card (README.md), pushed with the adapter."""
        return self.path / self.CARD

    @property
    def plot(self) -> Path:
        """The loss curve's image."""
        return self.path / self.PLOT

    def checkpoint(self, step: int) -> Path:
        """The checkpoint folder for ``step`` (it may not exist)."""
        return self.path / checkpoint_name(step)

    def checkpoints(self) -> list[Path]:
        """checkpoint-N folders, oldest first, whole or not."""
        found = [(checkpoint_step(p.name), p) for p in self.path.glob("checkpoint-*") if p.is_dir()]
        return [p for step, p in sorted((s, p) for s, p in found if s is not None)]

    def checkpoint_is_whole(self, path: Path) -> bool:
        """The Trainer finished writing it: adapter weights, and the trainer state (written last) readable."""
        try:
            json.loads((path / self.TRAINER_STATE).read_text())
        except (OSError, ValueError):
            return False
        return (path / self.ADAPTER_WEIGHTS).is_file()

    def checkpoint_progress(self, path: Path) -> int:
        """The optimizer step a whole checkpoint was saved at (from its trainer state)."""
        return int(json.loads((path / self.TRAINER_STATE).read_text()).get("global_step", checkpoint_step(path.name)))

    def latest_checkpoint(self) -> Path | None:
        """The newest whole checkpoint (one cut short by a kill or a full disk is never resumed from)."""
        return next((p for p in reversed(self.checkpoints()) if self.checkpoint_is_whole(p)), None)

    def partial_checkpoints(self) -> list[Path]:
        """Checkpoints newer than the newest whole one: left half-written by a kill or a full disk."""
        latest = self.latest_checkpoint()
        newest = checkpoint_step(latest.name) if latest else -1
        return [p for p in self.checkpoints() if checkpoint_step(p.name) > newest]

    def reserve(self, size: int = 64 * 1024) -> None:
        """Keep ``size`` bytes of the disk for the run's last word: a full disk must not leave it unsaid."""
        try:
            if not (self.path / self.RESERVE).exists():
                (self.path / self.RESERVE).write_bytes(b"\0" * size)
        except OSError:
            pass  # a disk already full: nothing to keep

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the job's process output, with secrets scrubbed."""
        try:
            with self.log.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 16384))
                text = fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        return scrub("\n".join(text.splitlines()[-lines:]))

    def has_tokenizer(self) -> bool:
        """The run saved a tokenizer beside its adapter."""
        return (self.path / self.TOKENIZER_CONFIG).exists()

    def has_adapter(self) -> bool:
        """Both adapter files are here."""
        return self.adapter_weights.exists() and self.adapter_config.exists()

    def holds_run(self) -> bool:
        """A trained adapter or a checkpoint is here already (a new run would overwrite it)."""
        return self.adapter_weights.exists() or self.latest_checkpoint() is not None

    def adapter_base(self) -> str:
        """The base model the adapter in this folder was trained on.

        Raises:
            ModelError: its adapter config is unreadable or names no base model.
        """
        try:
            raw = json.loads(self.adapter_config.read_bytes())
        except (OSError, ValueError):
            raw = None
        base = raw.get("base_model_name_or_path") if isinstance(raw, dict) else None
        if not isinstance(base, str) or not base:
            raise ModelError(f"the adapter {self.path} is damaged: its {self.ADAPTER_CONFIG} names no base model "
                             "(base_model_name_or_path)", "Give the base with --base, or push the adapter again from "
                             "its run folder (python -m phi3space push RUN_DIR).")
        return base

    # ------------------------------------------------------------ events

    def writer(self, enabled: bool = True, echo: Callable[[dict], None] | None = None) -> EventWriter:
        """An EventWriter for this run's events (``echo``: called with each event, as the CLI prints them)."""
        return EventWriter(self.events, enabled, echo)

    def append(self, type: str, **fields: Any) -> dict:
        """Add one event."""
        return self.writer().emit(type, **fields)

    def finish(self, status: str, error: dict | None = None, **fields: Any) -> dict:
        """Give the run its last word (see ``EventWriter.finish``)."""
        return self.writer().finish(status, error, **fields)

    def read_events(self, offset: int = 0) -> tuple[list[dict], int]:
        """Events written after byte ``offset``, and the offset to pass next time (a partial last line waits)."""
        try:
            with self.events.open("rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except (FileNotFoundError, NotADirectoryError):  # no events yet, or a path that is no run folder
            return [], offset
        end = data.rfind(b"\n") + 1
        events = []
        for raw in data[:end].splitlines():
            try:
                event = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict) and "type" in event:
                events.append(event)
        return events, offset + end

    def state(self) -> RunState:
        """The run's state now, folded from its events (incrementally: only new lines are read)."""
        key = str(self.path.resolve())
        with _cache_lock:
            offset, state = _cache.get(key, (0, None))
            state = state or RunState()
            events, new_offset = self.read_events(offset)
            if new_offset < offset:  # the file was replaced: fold from the start
                events, new_offset, state = *self.read_events(0), RunState()
            for e in events:
                state.fold(e)
            _cache[key] = (new_offset, state)
            return deepcopy(state)


_cache: dict[str, tuple[int, RunState]] = {}
_cache_lock = threading.Lock()


class EventWriter:
    """Appends events to a run's events.jsonl (only on the main process under multi-GPU). Each line is written
    with one ``write`` call on a file opened for appending, so a reader never sees two events interleaved."""

    def __init__(self, path: Path | None, enabled: bool = True, echo: Callable[[dict], None] | None = None):
        self.path = path  # None: events are only echoed (a CLI command without a run folder)
        self.enabled = enabled
        self.echo = echo  # the CLI prints a progress line per event
        self._cut = None  # unknown until the first write: did an earlier write stop mid-line (a full disk)?
        if enabled and path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, type: str, **fields: Any) -> dict:
        """Append one event. Raises OSError when the disk refuses it (the file keeps only whole lines)."""
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        # Secrets never reach the file, whatever a message or a config carried.
        line = scrub(json.dumps({"type": type, "time": round(time.time(), 3), **fields}, default=str, ensure_ascii=False))
        event = json.loads(line)
        if self.enabled:
            if self.path is not None:
                self._append((line + "\n").encode("utf-8"))
            if self.echo is not None:  # one progress line per run, not one per process
                self.echo(event)
        return event

    def finish(self, status: str, error: dict | None = None, **fields: Any) -> dict:
        """The run's last word: an ``error`` event (kind, message, hint) when given, then ``run_finished``. Every last
        word goes through here: the trainer's and the merge's own, the supervisor's for a process that died without
        one, the platform's for a Hugging Face job, and a run rebuilt from the Hub."""
        if status not in FINAL:
            raise ValueError(f"not a final status: {status!r}")
        events = [("error", {k: error.get(k) for k in ("kind", "message", "hint")})] if error else []
        last = None
        for type, values in events + [("run_finished", {"status": status, **fields})]:
            try:
                last = self.emit(type, **values)
            except OSError as exc:  # a full disk: the room kept for this (RunDir.reserve) is given up, once
                if exc.errno != errno.ENOSPC or not self._give_up_reserve():
                    raise
                last = self.emit(type, **values)
        self._give_up_reserve()  # said: the room is not needed any more
        return last

    @contextmanager
    def stages(self, task: str, total: int | None = None, on_stage: Callable[[str], None] | None = None,
               on_failed: Callable[[], None] | None = None, **started: Any) -> Iterator[Stages]:
        """A job that is not training (plan, merge, eval, export) from its ``run_started`` (with ``started``) to its
        last word: ``cancelled`` on Cancelled, ``failed`` with the error's message and hint on any other
        Phi3SpaceError (then ``on_failed`` clears up; both are raised on), else ``completed``. The ``Stages`` it yields
        writes the stages between."""
        stages = Stages(self, task, total, on_stage)
        self.emit("run_started", task=task, max_steps=total, **started)
        try:
            yield stages
        except Cancelled:
            self.finish("cancelled", task=task, step=stages.step, adapter=None)
            raise
        except Phi3SpaceError as exc:
            self.finish("failed", {"kind": exc.kind, "message": exc.message, "hint": exc.hint}, task=task,
                        step=stages.step, adapter=None)
            if on_failed is not None:
                on_failed()
            raise
        model = {"model": stages.model} if stages.model is not None else {}
        self.finish("completed", task=task, step=stages.step, adapter=None, **model)

    def _give_up_reserve(self) -> bool:
        if self.path is None:
            return False
        try:
            (self.path.parent / RunDir.RESERVE).unlink()
            return True
        except OSError:
            return False

    def _append(self, data: bytes) -> None:
        """One whole line or nothing: a write the disk cuts short is taken back (and a line an earlier process left
        cut is ended before the next one, so it cannot swallow it)."""
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if self._cut is None:
                self._cut = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
            if self._cut:
                data = b"\n" + data
            try:
                written = os.write(fd, data)
                if written < len(data):
                    raise OSError(errno.ENOSPC, "No space left on device (an event was cut short)", str(self.path))
            except OSError:
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    self._cut = None  # could not take it back: look at the end of the file next time
                raise
            self._cut = False
        finally:
            os.close(fd)


class Stages:
    """The stages of a job that is not training, as ``progress`` events (from ``EventWriter.stages``): ``step`` is the
    last one written, ``total`` their number when known, and ``model`` (what was made: a folder, a file or a repo
    URL) is named in the completed last word."""

    def __init__(self, writer: EventWriter, task: str, total: int | None, on_stage: Callable[[str], None] | None):
        self.writer, self.task, self.total, self.on_stage = writer, task, total, on_stage
        self.step = 0
        self.model: str | None = None

    def __call__(self, text: str) -> None:
        """The next stage begins: one more step, named ``text``."""
        self.at(self.step + 1, text)

    def at(self, step: int, text: str, **fields: Any) -> None:
        """Step ``step`` begins, named ``text`` (``fields``: more to say, such as eta_s)."""
        self.step = step
        self.writer.emit("progress", task=self.task, step=step, max_steps=self.total, stage=text, **fields)
        if self.on_stage is not None:
            self.on_stage(text)
