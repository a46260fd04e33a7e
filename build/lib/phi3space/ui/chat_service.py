"""Chat for the web app: which adapter a visitor may use, and one cached ChatEngine per base model.

Adapters are resolved to a local folder here, with the visitor's own token, before they reach the shared engine:
the engine never downloads with someone else's token, and a visitor never reaches another visitor's run.

The GPU is shared with training: when a job starts on a GPU machine the chat models are dropped (the GPU is given
back), and while a job trains a chat model is loaded again only if the GPU has room for it. On ZeroGPU each reply
runs in ``spaces.GPU``'s forked worker (phi3space.chat.zerogpu), the only place a GPU exists there.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from phi3space.chat import engines, zerogpu
from phi3space.chat.engine import MAX_BATCH
from phi3space.engine.hardware import gpus, zero_gpu
from phi3space.errors import ConfigError, ModelError
from phi3space.generation import DEFAULTS, GenerationSettings
from phi3space.jobs.scheduler import JobRunner
from phi3space.jobs.store import Job
from phi3space.refs import is_local_ref, ref_problem
from phi3space.report import human_duration
from phi3space.run import RunDir
from phi3space.ui.services import Visitor, get_runner, run_status

CHAT_CONCURRENCY = {"concurrency_limit": MAX_BATCH, "concurrency_id": "chat"}  # the page and /chat share it: as
# many replies at once as the engine writes in one batch (gradio's default of 4 would let two accounts hold them all)
CHATS_PER_VISITOR = 2  # replies being written at once for one signed-in visitor (two tabs, or compare mode)
ANONYMOUS_CHATS = 1  # for all anonymous callers of a public Space together
ANONYMOUS_MAX_NEW_TOKENS = DEFAULTS.max_new_tokens  # anonymous callers: replies no longer than the default
ANONYMOUS_MAX_SECONDS = 30.0

_in_flight: Counter = Counter()
_slots_lock = threading.Lock()


def resolve_for_visitor(ref: str, visitor: Visitor, runner: JobRunner, space: bool) -> Path:
    """A local adapter folder for ``ref``: one of the visitor's job ids or run folders, a Hub repo ID, or (off a
    Space) any run folder that is not another visitor's.

    Raises:
        ModelError: unknown, not finished, someone else's, or a server path on a Space.
    """
    from phi3space.engine.adapters import resolve_adapter

    ref = (ref or "").strip()
    if not ref:
        raise ModelError("choose an adapter", "Pick one of your finished runs, or type a Hub adapter repo ID (user/name).")
    if problem := ref_problem(ref, "adapter"):
        raise ModelError(problem, "Pick one of your finished runs, or type a Hub adapter repo ID (user/name).")
    jobs = runner.list(visitor.owner) if visitor.owner else []
    for job in jobs:
        status, state = run_status(job)
        if ref in (job.id, job.run_dir, state.adapter_repo, state.adapter_url):
            if state.can_chat and job.run.has_adapter():
                return job.run.path
            if state.has_adapter and state.adapter_repo:  # brought back from the Hub after a restart
                return resolve_adapter(state.adapter_repo, visitor.hub_token(space))
            hint = ("Wait for it to finish, or choose another run." if status in ("queued", "running") else
                    "It ended without an adapter: resume it or start it again, or choose another run.")
            raise ModelError(f"run {job.name} ({job.id}) has no adapter (status: {status})", hint)
    if is_local_ref(ref):
        if space or runner.data.holds_run(ref):
            raise ModelError(f"{ref} is not one of your runs", "Pick one of your finished runs, or a Hub adapter repo ID.")
        return resolve_adapter(ref)
    return resolve_adapter(ref, visitor.hub_token(space))


def engine_for(base: str, token: str | None, runner: JobRunner | None = None):
    """The cached ChatEngine for ``base`` (loading it, and dropping the least recently used beyond MAX_ENGINES).

    Raises:
        ModelError: a job trains on the GPU and there is no room beside it for this model.
    """
    runner = runner or get_runner()
    _give_gpu_back_to(runner)
    return engines.engine(base, token, before_load=lambda base: _check_room_beside_training(base, runner))


@contextmanager
def chat_slot(visitor: Visitor):
    """At most CHATS_PER_VISITOR replies at once per visitor, and ANONYMOUS_CHATS for all anonymous callers together.

    Raises:
        ModelError: the visitor already has that many replies on their way.
    """
    key = visitor.owner or ""  # anonymous callers share one allowance
    limit = CHATS_PER_VISITOR if visitor.owner else ANONYMOUS_CHATS
    with _slots_lock:
        if _in_flight[key] >= limit:
            raise ModelError(f"{'you already have' if visitor.owner else 'anonymous visitors already have'} {limit} "
                             f"repl{'y' if limit == 1 else 'ies'} being written",
                             "Wait for it to finish (or stop it)." + ("" if visitor.owner else " Sign in for more."))
        _in_flight[key] += 1
    try:
        yield
    finally:
        with _slots_lock:
            _in_flight[key] -= 1


def chat_memory_gb(base: str) -> float:
    """About what a chat model takes on the GPU: 16-bit weights plus a margin for the KV cache."""
    from phi3space.engine.estimates import model_size

    return model_size(base)[0] * 2 / 2**30 + 1.0


def _check_room_beside_training(base: str, runner: JobRunner) -> None:
    training = runner.gpu_jobs()
    if not training or zero_gpu():
        return
    found = gpus()
    if not found:
        return
    need, free = chat_memory_gb(base), found[0].free_gb
    if need <= free * 0.9:
        return
    job = training[0]
    eta = runner.state(job).get("eta_s")
    when = f" (about {human_duration(eta)} from now)" if eta else ""
    raise ModelError(f"the GPU is training {job.name} ({job.id}): {free:.0f} GB free, chat needs about {need:.0f} GB",
                     f"Chat is back when that job ends{when}; until then the GPU is the training's.")


def held_gb() -> float:
    """GPU memory this process's chat models hold (0 when none, or when torch was never loaded here)."""
    torch = sys.modules.get("torch")
    if not engines.held() or torch is None or not torch.cuda.is_available():
        return 0.0
    return torch.cuda.memory_reserved() / 2**30


def release_gpu(job: Job | None = None) -> None:
    """Drop the chat models and hand their GPU memory back (a job is about to train on this GPU)."""
    engines.drop_all()


_watched: set[int] = set()


def _give_gpu_back_to(runner: JobRunner) -> None:
    """Once per runner: on a GPU machine, its jobs get the GPU from chat before they start."""
    if id(runner) in _watched:
        return
    _watched.add(id(runner))
    runner.before_start.append(lambda job: release_gpu(job) if gpus() else None)


def stream_reply(adapter_dir: Path | None, base: str | None, messages: list[dict], visitor: Visitor, space: bool,
                 settings: GenerationSettings = DEFAULTS) -> Iterator[str]:
    """Stream a reply (the text so far) from the adapter, or from its base model when ``adapter_dir`` is None.
    Anonymous visitors get shorter replies and less time."""
    from phi3space.chat.engine import MAX_SECONDS
    from phi3space.engine.adapters import adapter_base

    base = base or adapter_base(adapter_dir)
    if space and is_local_ref(base) and not _own_run_base(adapter_dir):
        raise ModelError(f"the adapter's base model {base} is a path on the server", "Use an adapter trained on a Hub model.")
    seconds = MAX_SECONDS
    if visitor.owner is None:
        settings, seconds = settings.capped(ANONYMOUS_MAX_NEW_TOKENS), ANONYMOUS_MAX_SECONDS
    runner = get_runner()
    runner.touch()
    adapter = str(adapter_dir) if adapter_dir else None
    with chat_slot(visitor):
        if zero_gpu():  # the bases loaded at start only; the reply in spaces.GPU's forked worker
            yield from zerogpu.stream(base, adapter, messages, settings.as_kwargs(), seconds)
            return
        engine = engine_for(base, visitor.hub_token(space), runner)  # loaded here, with the visitor's token
        yield from engine.stream(messages, adapter, max_seconds=seconds, **settings.as_kwargs())


def _own_run_base(adapter_dir: Path | None) -> bool:
    return adapter_dir is not None and RunDir(adapter_dir).events.exists()


def build_messages(history: list[dict], message: str, system: str | None) -> list[dict]:
    """The conversation to answer: the system prompt, the earlier turns and ``message``.

    Raises:
        ConfigError: an empty message (nothing to answer).
    """
    if not isinstance(message, str) or not message.strip():
        raise ConfigError(["message: empty"], "Type a message to send.")
    msgs = [{"role": "system", "content": system}] if system and system.strip() else []
    msgs += [{"role": m["role"], "content": _text(m["content"])} for m in history if m.get("role") in ("user", "assistant")]
    return msgs + [{"role": "user", "content": message}]


def _text(content) -> str:
    """gradio 6 chat messages may carry content as a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)
