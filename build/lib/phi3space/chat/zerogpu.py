"""Chat on ZeroGPU, the way the platform runs it (spaces 0.51): a GPU exists only inside a call of a function
decorated with ``spaces.GPU``, and each call runs in a worker forked from the web process, the arguments pickled into
it and each yielded value pickled back. Hence:

- ``reply`` is a module-level function, decorated once, at import (``spaces`` caches the wrapper by function
  object): its arguments and what it yields are plain data (the base's ID, the adapter's local folder, the messages,
  the generation settings as a dict, the seconds allowed; text, or a failure as a dict: ``spaces`` passes an
  exception back as its class name only).
- its GPU time is asked per call (``duration``): the reply's own time limit plus the worker's start, and the reply is
  cut at that limit inside the worker, so it ends before ZeroGPU takes the GPU back.
- the models are loaded in the web process at start (``preload``), on the thread that imported ``spaces``: its CUDA
  emulation lives on that thread only (spaces/zero/torch/patching.py), so a model placed on CUDA anywhere else fails.
  Nothing is loaded after start: a base not loaded then is refused with what the Space's owner can set
  (PHI3SPACE_CHAT_BASES), and the preloaded bases are pinned (phi3space.chat.engines never drops them).
- ``spaces`` is imported before anything initialises CUDA and before gradio launches (it hooks ``Blocks.launch``):
  app.py imports this module first.
- what ``spaces`` raises (quota, queue, a GPU taken back) becomes a ModelError with a sentence and a hint
  (``platform_error``).

Off ZeroGPU the page calls the engine directly (it batches the replies of every visitor together).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from phi3space.chat import engines
from phi3space.engine.hardware import zero_gpu
from phi3space.errors import ModelError, Phi3SpaceError

PRELOAD_ENV = "PHI3SPACE_CHAT_BASES"  # the bases loaded at start on ZeroGPU (comma-separated); default: the form's
START_SECONDS = 15  # of each GPU call, before the reply: the worker starts and the weights move onto the GPU
MAX_GPU_SECONDS = 300  # what one call may ask at most


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


def reply_seconds(max_new_tokens: int, max_seconds: float) -> float:
    """How long one reply may write on the GPU: its own time limit, or less for a short reply (20 s plus 8 tokens a
    second); a short request asks for less of the visitor's daily GPU quota."""
    return max(1.0, min(float(max_seconds), 20 + max_new_tokens / 8, MAX_GPU_SECONDS - START_SECONDS))


def gpu_seconds(max_new_tokens: int, max_seconds: float) -> int:
    """Seconds of ZeroGPU time asked for one reply: the longest it may write, plus the worker's start."""
    return math.ceil(reply_seconds(max_new_tokens, max_seconds) + START_SECONDS)


def duration(base: str, adapter: str | None, messages: list[dict], settings: dict, max_seconds: float) -> int:
    """The GPU time of one ``reply`` call, from its own arguments (spaces calls it with them)."""
    return gpu_seconds(int(settings.get("max_new_tokens", 0)), max_seconds)


def reply(base: str, adapter: str | None, messages: list[dict], settings: dict, max_seconds: float) -> Iterator:
    """The reply's text as it grows, from the base loaded at start with ``adapter`` (a local folder) or alone, cut
    at ``reply_seconds``; a Phi3SpaceError is yielded as a dict (``spaces`` would pass on its class name only).
    Runs in ZeroGPU's worker; every argument and every yielded value crosses a pickling boundary."""
    try:
        held = engines.held_engine(base)
        if held is None:
            raise not_served(base)
        seconds = reply_seconds(int(settings.get("max_new_tokens", 0)), max_seconds)
        yield from held.stream(messages, adapter, max_seconds=seconds, **settings)
    except Phi3SpaceError as exc:
        yield {"error": type(exc).__name__, "message": exc.message, "hint": exc.hint}


def not_served(base: str) -> ModelError:
    """The error for a base that this ZeroGPU Space did not load at start."""
    served = engines.held()
    return ModelError(f"this Space chats with {', '.join(served) or 'no base model'} only; the adapter's base model "
                      f"{base} is not loaded here (on ZeroGPU models are loaded only when the Space starts)",
                      f"The Space's owner can add {base} to {PRELOAD_ENV} (a comma-separated list of base models, in "
                      "the Space's settings) and restart the Space; or chat with an adapter trained on "
                      f"{served[0] if served else 'a base it loads'}.")


def stream(base: str, adapter: str | None, messages: list[dict], settings: dict, max_seconds: float) -> Iterator[str]:
    """One reply on ZeroGPU, from the web process: refused at once for a base not loaded at start; every failure,
    ours or the platform's, raised as a Phi3SpaceError."""
    if engines.held_engine(base) is None:
        raise not_served(base)
    try:
        for item in on_gpu(base, adapter, messages, settings, max_seconds):
            if isinstance(item, dict):
                raise ModelError(item["message"], item["hint"])
            yield item
    except Phi3SpaceError:
        raise
    except Exception as exc:
        mapped = platform_error(exc)
        if mapped is None:
            raise
        raise mapped from None


# What spaces 0.51.3 raises (zero/client.py, zero/wrappers.py): a gr.Error whose title names the case, its message
# already a sentence for the quota cases; "GPU task aborted" when the platform took the GPU back; the class name of
# anything else raised in the worker; a RuntimeError for a failed scheduling call.
_TRY_LATER = "Try again in a minute."
_HINTS = {
    "ZeroGPU quota exceeded": "Sign in with Hugging Face for a larger daily GPU allowance (PRO accounts get the most), "
                              "wait until your quota resets, or ask for fewer new tokens.",
    "ZeroGPU illegal duration": "Ask for fewer new tokens: a shorter reply asks for less GPU time.",
    "ZeroGPU pending credits exceeded": "Wait for your other GPU tasks to finish, then try again.",
    "ZeroGPU queue timeout": _TRY_LATER + " Signed-in visitors wait in a faster queue.",
    "ZeroGPU client error": _TRY_LATER,
}


def platform_error(exc: BaseException) -> ModelError | None:
    """What ``spaces`` raised, as a sentence and a hint; None for anything else (a bug keeps its traceback)."""
    title = getattr(exc, "title", None)
    if isinstance(title, str) and title.startswith("ZeroGPU") and type(exc).__module__.startswith(("gradio", "spaces")):
        text = str(getattr(exc, "message", "") or exc).strip()
        if title == "ZeroGPU worker error":
            if text == "GPU task aborted":
                return ModelError("ZeroGPU took the GPU back before the reply was written (the GPU task was aborted)",
                                  "Ask for fewer new tokens, or try again.")
            return ModelError(f"the ZeroGPU worker failed while writing the reply ({text})",
                              "Try again; if it keeps failing, the Space's owner finds the cause in the Space's logs.")
        sentence = text.rstrip(". ") or "ZeroGPU refused the request"
        return ModelError(f"ZeroGPU: {sentence}", _HINTS.get(title, _TRY_LATER))
    if isinstance(exc, RuntimeError) and _raised_in_spaces(exc):
        return ModelError(f"ZeroGPU could not lend a GPU for this reply ({str(exc).strip()[:200]})", _TRY_LATER)
    return None


def _raised_in_spaces(exc: BaseException) -> bool:
    spaces = sys.modules.get("spaces")
    if spaces is None or exc.__traceback__ is None:
        return False
    home = Path(spaces.__file__).parent
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return home in Path(tb.tb_frame.f_code.co_filename).parents


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
    """Load the chat bases at start (ZeroGPU documents it so: the worker inherits them), pinned; returns the bases
    loaded. A base that cannot be loaded now is reported in the log; chat on it is refused until a restart loads it."""
    from phi3space.config import DEFAULT_BASE

    loaded = []
    for base in [b.strip() for b in os.environ.get(PRELOAD_ENV, DEFAULT_BASE).split(",") if b.strip()]:
        try:
            engines.engine(base, token, pin=True)
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
