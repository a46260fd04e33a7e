"""User-facing errors (a message and a hint) and secret scrubbing.

Every mistake a user can make ends in one of these; the CLI prints it and exits non-zero, the UI shows it as a
``gr.Error``. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import re


class Phi3SpaceError(Exception):
    """An error the user can act on: ``message`` says what is wrong, ``hint`` what to do about it."""

    kind = "error"

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = scrub(message)
        self.hint = scrub(hint)

    def __str__(self) -> str:
        return f"{self.message}\nHint: {self.hint}" if self.hint else self.message


class ConfigError(Phi3SpaceError):
    """Bad settings: every problem found, in one message (``problems`` keeps them one by one)."""

    kind = "config"

    def __init__(self, problems: list[str], hint: str = ""):
        self.problems = problems
        text = problems[0] if len(problems) == 1 else "Invalid settings:\n" + "\n".join(f"  - {p}" for p in problems)
        super().__init__(text, hint or "Fix the settings named above and run again.")


class DataError(Phi3SpaceError):
    """The training or evaluation data cannot be used: missing, unreadable, or in no format we train on."""

    kind = "data"


class ModelError(Phi3SpaceError):
    """A base model or an adapter cannot be used (missing, damaged, not a Phi-3, trained on another base), or torch
    cannot use the GPU here."""

    kind = "model"


class AuthError(Phi3SpaceError):
    """A Hugging Face token is missing, refused, or may not do what was asked."""

    kind = "auth"


class SignInNeeded(AuthError):
    """The work needs the caller's Hugging Face sign-in (web app) or token (CLI), and there is none. The hint here
    is the CLI's; the web page says how to sign in there (ui.common)."""

    def __init__(self, message: str, why: str = ""):
        self.why = why
        super().__init__(message, "Set HF_TOKEN or run `hf auth login`" + (f": {why}" if why else "."))


class HubError(Phi3SpaceError):
    """The Hugging Face Hub refused the work or could not be reached."""

    kind = "hub"


class JobsError(Phi3SpaceError):
    """Hugging Face Jobs refused or lost a job."""

    kind = "jobs"


class OutOfMemory(Phi3SpaceError):
    """The work does not fit in the memory here (GPU or CPU)."""

    kind = "oom"


class DiskFull(Phi3SpaceError):
    """The disk filled up while writing a run's files."""

    kind = "disk"


class Diverged(Phi3SpaceError):
    """Training went wrong numerically (the loss became NaN or infinite)."""

    kind = "diverged"


class Cancelled(Phi3SpaceError):
    """The work was stopped before it ended (Stop on the page, Ctrl-C, a signal)."""

    kind = "cancelled"


HF_TOKEN_SHAPE = re.compile(r"hf_[A-Za-z0-9]{20,}")  # what a Hugging Face access token looks like


def looks_like_token(value: str) -> bool:
    """``value`` holds something shaped like a Hugging Face access token (``hf_...``)."""
    return isinstance(value, str) and HF_TOKEN_SHAPE.search(value) is not None


# Hugging Face tokens (hf_...), bearer headers and token= query parameters.
_SECRET_PATTERNS = [
    re.compile(r"hf_[A-Za-z0-9]{8,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]{8,}"),
    re.compile(r"(?i)((?:token|access_token|authorization)[\"']?\s*[=:]\s*[\"']?)[A-Za-z0-9._\-]{8,}"),
]
_known_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret so that ``scrub`` removes it even when it does not look like a token."""
    if value and len(value) >= 6:
        _known_secrets.add(value)


def scrub(text: str) -> str:
    """Replace anything token-shaped (and every registered secret) in ``text`` with ``***``."""
    if not text:
        return text
    for secret in _known_secrets:
        text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "***", text)
    return text
