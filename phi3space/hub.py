"""Hugging Face Hub: whose token, and (see push.py) where adapters go."""

from __future__ import annotations

import os

from .errors import register_secret

MOCK_TOKEN = "mock-oauth-token-for-local-dev"  # what gradio injects off a Space: not a token


def resolve_token(explicit: str | None = None) -> str | None:
    """The caller's token (the web app passes the visitor's OAuth token), else HF_TOKEN, else the saved login."""
    token = explicit if explicit and explicit != MOCK_TOKEN else None
    if token is None:
        from huggingface_hub import get_token

        token = os.environ.get("HF_TOKEN") or get_token()
    register_secret(token)
    return token
