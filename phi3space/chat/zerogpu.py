"""Chat on ZeroGPU, the way the platform runs it (spaces 0.51): a GPU exists only inside a call of a function
decorated with ``spaces.GPU``, and each call runs in a worker forked from the web process, the arguments pickled into
it and each yielded value pickled back. Hence:

- ``reply`` is a module-level function, decorated once, at import (``spaces`` caches the wrapper by function
  object): its arguments and what it yields are plain data (the base's ID, the adapter's local folder, the messages,
  the generation settings as a dict, the seconds allowed; text).
- its GPU time is asked per call: ``duration`` is a function of the request (the reply's token budget).
- the models are loaded in the web process, at start (``preload``) as ZeroGPU documents, and kept by base ID
  (phi3space.chat.engines): the forked worker inherits them, and ``spaces`` moves them to the GPU inside the call.
- ``spaces`` is imported before anything initialises CUDA and before gradio launches (it hooks ``Blocks.launch``):
  app.py calls ``import_spaces`` first.

Off ZeroGPU the page calls the engine directly (it batches the replies of every visitor together).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

from phi3space.chat import engines
from phi3space.engine.hardware import zero_gpu
from phi3space.errors import ModelError, Phi3SpaceError

PRELOAD_ENV = "PHI3SPACE_CHAT_BASES"  # the bases loaded at start on ZeroGPU (comma-separated); default: the form's


def import_spaces():
    """On ZeroGPU, ``spaces`` (imported now, before CUDA and before launch); None elsewhere.

    Raises:
        ModelError: the Space runs on ZeroGPU and ``spaces`` is not installed.
    """
    if not zero_gpu():
        return None
    try:
        import spaces
    except ImportError:
        raise ModelError("this Space runs on ZeroGPU but the `spaces` package is missing",
                         "Add `spaces` to requirements.txt (ZeroGPU Spaces ship it).") from None
    return spaces


def gpu_seconds(max_new_tokens: int) -> int:
    """Seconds of ZeroGPU time asked for one reply (the least, 60 s, fits the default reply; longer replies ask more)."""
    return int(min(300, max(60, 20 + max_new_tokens / 8)))


def duration(base: str, adapter: str | None, messages: list[dict], settings: dict, max_seconds: float) -> int:
    """The GPU time of one ``reply`` call, from its own arguments (spaces calls it with them)."""
    return gpu_seconds(int(settings.get("max_new_tokens", 0)))


def reply(base: str, adapter: str | None, messages: list[dict], settings: dict, max_seconds: float) -> Iterator[str]:
    """The reply's text as it grows, from the base (loaded at start, or now) with ``adapter`` (a local folder) or
    alone. Runs in ZeroGPU's worker; every argument and every yielded value crosses a pickling boundary."""
    yield from engines.engine(base).stream(messages, adapter, max_seconds=max_seconds, **settings)


def start() -> list[str]:
    """At the app's start on ZeroGPU: the chat bases loaded (``preload``), or the log saying why chat cannot work."""
    try:
        if import_spaces() is None:
            return []
    except ModelError as exc:
        print(f"phi3space: {exc.message}\nhint: {exc.hint}", file=sys.stderr)
        return []
    return preload()


def preload(token: str | None = None) -> list[str]:
    """Load the chat bases at start (ZeroGPU documents it so: the worker inherits them); returns the bases loaded.
    A base that cannot be loaded now is reported in the log and loaded at its first reply instead."""
    from phi3space.config import DEFAULT_BASE

    loaded = []
    for base in [b.strip() for b in os.environ.get(PRELOAD_ENV, DEFAULT_BASE).split(",") if b.strip()]:
        try:
            engines.engine(base, token)
            loaded.append(base)
            print(f"phi3space: chat model {base} loaded at start (ZeroGPU)", file=sys.stderr)
        except Phi3SpaceError as exc:
            print(f"phi3space: chat model {base} not loaded at start: {exc.message}", file=sys.stderr)
    return loaded


def _decorated():
    try:
        spaces = import_spaces()
    except ModelError as exc:
        missing = exc

        def refuse(*args, **kwargs):
            raise missing
            yield  # a generator, as ``reply``

        return refuse
    return reply if spaces is None else spaces.GPU(duration=duration)(reply)


on_gpu = _decorated()  # created once: the function every reply goes through
