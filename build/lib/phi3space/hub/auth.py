"""Whose token acts, in one place.

- A visitor's own work (their runs, pushes, reads on their behalf) uses the visitor's token: ``acting_token``.
- Off a Space, a caller without a token is the machine's user: the local login (HF_TOKEN, else the saved token).
- On a Space, the owner's HF_TOKEN is taken out of the environment at start (``keep_owner_token_out``) and used only
  for the owner's own actions (pausing the idle Space, the bucket copy): ``owner_token``.
- gradio's local stand-in token is no token: ``real_token``.
- A job's process gets the acting token as its HF_TOKEN and nothing else: ``token_env``.
"""

from __future__ import annotations

import os
from pathlib import Path

from phi3space.errors import register_secret
from phi3space.hub.space import on_space

MOCK_TOKEN = "mock-oauth-token-for-local-dev"  # what gradio injects off a Space: not a token


def real_token(token: str | None) -> str | None:
    """``token``, or None when it is empty or gradio's mock token (what gradio injects off a Space)."""
    return token if token and token != MOCK_TOKEN else None


def resolve_token(explicit: str | None = None) -> str | None:
    """The caller's token (the web app passes the visitor's OAuth token), else HF_TOKEN, else the saved login."""
    token = real_token(explicit)
    if token is None:
        from huggingface_hub import get_token

        token = os.environ.get("HF_TOKEN") or get_token()
    register_secret(token)
    return token


_owner_token: str | None = None


def keep_owner_token_out(space: bool | None = None) -> str | None:
    """On a Space, the owner's HF_TOKEN must never ride along on a visitor's Hub calls, even those a library makes
    without passing a token (transformers lists a model's files that way while loading it). The token leaves the
    environment (kept here for the owner's own operations: the idle pause, the bucket copy) and implicit tokens are
    switched off. app.py calls it before huggingface_hub is imported; the job runner again. Returns the owner's token."""
    global _owner_token
    if not (on_space() if space is None else space):
        return None
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        _owner_token = os.environ.pop(name, None) or _owner_token
    os.environ["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
    os.environ["HF_TOKEN_PATH"] = os.path.join(os.environ.get("TMPDIR", "/tmp"), "phi3space-no-token", "token")
    register_secret(_owner_token)
    return _owner_token


def owner_token() -> str | None:
    """The Space owner's token, for the owner's own operations only (never a visitor's work)."""
    return _owner_token



def acting_token(token: str | None, space: bool | None = None) -> str | None:
    """The token that acts for a caller: their own; off a Space, without one, the local login; on a Space nothing
    else (never the owner's)."""
    token = real_token(token)
    if token or (on_space() if space is None else space):
        register_secret(token)
        return token
    return resolve_token()


def token_env(token: str | None, space: bool, base: dict | None = None) -> dict[str, str]:
    """A job process's environment: ``token`` as HF_TOKEN, and on a Space never the owner's (nor a saved login)."""
    env = dict(os.environ if base is None else base)
    if token or space:
        env.pop("HF_TOKEN", None)
        env.pop("HUGGING_FACE_HUB_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    if space:  # no fallback to a token file saved on the machine either
        env["HF_TOKEN_PATH"] = str(Path(env.get("TMPDIR", "/tmp")) / "phi3space-no-token" / "token")
    return env
