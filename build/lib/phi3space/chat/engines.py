"""The chat models this process holds: one ChatEngine per base model, kept by base ID, the least recently used
dropped beyond MAX_ENGINES. Module-level on purpose: on ZeroGPU the reply runs in a worker forked from this process
(phi3space.chat.zerogpu), which finds the models loaded here at start by their base ID.

A base loaded with ``pin=True`` (ZeroGPU's preloaded bases) is never dropped to make room, and does not count
against MAX_ENGINES: on ZeroGPU nothing can be loaded again after start, so dropping one would break chat on it for
everyone until a restart.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable

MAX_ENGINES = int(os.environ.get("PHI3SPACE_CHAT_ENGINES", "1"))  # base models kept in memory at once (unpinned)

_engines: OrderedDict[str, object] = OrderedDict()
_pinned: set[str] = set()
_lock = threading.Lock()


def engine(base: str, token: str | None = None, before_load: Callable[[str], None] | None = None, pin: bool = False):
    """The ChatEngine for ``base``, loading it (with ``token``, which the engine does not keep) if it is not held;
    ``before_load(base)`` runs first and may refuse (raise). ``pin``: never drop it (ZeroGPU's preloaded bases)."""
    from phi3space.chat.engine import ChatEngine

    with _lock:
        if base in _engines:
            _engines.move_to_end(base)
            if pin:
                _pinned.add(base)
            return _engines[base]
        if before_load is not None:
            before_load(base)
        while len([b for b in _engines if b not in _pinned]) >= MAX_ENGINES and not pin:
            _engines.pop(next(b for b in _engines if b not in _pinned))
        loaded = ChatEngine(base, token)
        _engines[base] = loaded
        if pin:
            _pinned.add(base)
        return loaded


def held_engine(base: str):
    """The ChatEngine held for ``base``, or None; never loads."""
    with _lock:
        return _engines.get(base)


def held() -> list[str]:
    """The bases held now."""
    with _lock:
        return list(_engines)


def drop_all() -> bool:
    """Drop every unpinned chat model and give back the GPU memory they held; whether there was any."""
    with _lock:
        dropped = [b for b in _engines if b not in _pinned]
        if not dropped:
            return False
        for base in dropped:
            del _engines[base]
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return True
