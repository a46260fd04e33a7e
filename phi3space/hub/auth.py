"""Whose token acts: the caller's, the local login, or (on a Space, for the owner's own actions only) the owner's."""

from __future__ import annotations

import os

from phi3space.errors import register_secret
from phi3space.hub.space import on_space

MOCK_TOKEN = "mock-oauth-token-for-local-dev"  # what gradio injects off a Space: not a token


def resolve_token(explicit: str | None = None) -> str | None:
    """The caller's token (the web app passes the visitor's OAuth token), else HF_TOKEN, else the saved login."""
    token = explicit if explicit and explicit != MOCK_TOKEN else None
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

