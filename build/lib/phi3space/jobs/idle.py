"""Cost: pause this Space (with the owner's token) once nothing has been queued or chatted for a while."""

from __future__ import annotations

import os
import sys
import threading
import time

from phi3space.errors import Phi3SpaceError
from phi3space.hub.auth import keep_owner_token_out

PAUSE_ENV = "PHI3SPACE_PAUSE_IDLE_MINUTES"


class IdlePause:
    """Pause this Space (huggingface_hub ``pause_space``, with the owner's HF_TOKEN) once nothing has been queued,
    trained or chatted for ``minutes``; never while a job runs. A paused Space stops billing and stays paused until
    its owner restarts it: visitors then see it paused, not asleep."""

    def __init__(self, minutes: float | None, space: str | None, token: str | None):
        self.minutes, self.space, self.token = minutes, space, token
        self.last_busy = time.time()
        self.paused = False
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, space: str | None) -> IdlePause | None:
        """The idle pause PHI3SPACE_PAUSE_IDLE_MINUTES asks for on the Space ``space``: None when it is unset or this is
        no Space, and None with a line on stderr saying why when it is not a positive number of minutes or the owner's
        HF_TOKEN secret is missing."""
        raw = os.environ.get(PAUSE_ENV)
        if not raw or not space:
            return None
        try:
            minutes = float(raw)
        except ValueError:
            print(f"phi3space: {PAUSE_ENV}={raw!r} is not a number of minutes: no idle pause", file=sys.stderr)
            return None

        token = keep_owner_token_out(space=True)
        if minutes <= 0 or not token:
            print(f"phi3space: {PAUSE_ENV} needs a positive number and the owner's HF_TOKEN secret: no idle pause",
                  file=sys.stderr)
            return None
        return cls(minutes, space, token)

    def touch(self) -> None:
        """Someone used the Space (a chat reply): the idle clock starts again."""
        with self._lock:
            self.last_busy = time.time()

    def tick(self, busy: bool) -> bool:
        """Called by the job supervisor; True when it paused the Space just now."""
        with self._lock:
            now = time.time()
            if busy:
                self.last_busy = now
                return False
            if self.paused or now - self.last_busy < self.minutes * 60:
                return False
            self.last_busy = now  # a failed attempt is retried after another idle period
        return self._pause()

    def _pause(self) -> bool:
        from huggingface_hub import HfApi

        from phi3space.hub.errors import call

        try:
            call(lambda: HfApi(token=self.token).pause_space(self.space), "pause the Space", attempts=2)
        except Phi3SpaceError as exc:
            print(f"phi3space: could not pause {self.space}: {exc.message}", file=sys.stderr)
            return False
        self.paused = True
        print(f"phi3space: no job or chat for {self.minutes:g} min: paused {self.space} (its owner restarts it)",
              file=sys.stderr)
        return True

