"""The chat models this process holds: one ChatEngine per base model, kept by base ID, the least recently used
dropped beyond MAX_ENGINES. Module-level on purpose: on ZeroGPU the reply runs in a worker forked from this process
(phi3space.chat.zerogpu), which finds the models loaded here at start by their base ID.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable

MAX_ENGINES = int(os.environ.get("PHI3SPACE_CHAT_ENGINES", "1"))  # base models kept in memory at once

_engines: OrderedDict[str, object] = OrderedDict()
_lock = threading.Lock()


def engine(base: str, token: str | None = None, before_load: Callable[[str], None] | None = None):
    """The ChatEngine for ``base``, loading it (with ``token``, which the engine does not keep) if it is not held;
    ``before_load(base)`` runs first and may refuse (raise)."""
    from phi3space.chat.engine import ChatEngine

    with _lock:
        if base in _engines:
            _engines.move_to_end(base)
            return _engines[base]
        while len(_engines) >= MAX_ENGINES:
            _engines.popitem(last=False)
        if before_load is not None:
            before_load(base)
        loaded = ChatEngine(base, token)
        _engines[base] = loaded
        return loaded


def held() -> list[str]:
    """The bases held now."""
    with _lock:
        return list(_engines)


def drop_all() -> bool:
    """Drop every chat model and give back the GPU memory they held; whether there was any."""
    with _lock:
        if not _engines:
            return False
        _engines.clear()
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return True
