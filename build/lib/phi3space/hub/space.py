"""The Hugging Face Space this app may run in: is it one, which, and pausing it when idle."""

from __future__ import annotations

import os


def on_space() -> bool:
    """True inside a Hugging Face Space, decided as gradio decides it: SYSTEM=spaces and a SPACE_ID (a SPACE_ID
    alone, e.g. copied into a developer's shell, is not a Space)."""
    return os.environ.get("SYSTEM") == "spaces" and bool(os.environ.get("SPACE_ID"))


def space_id() -> str | None:
    """owner/name of the Space this app runs in; None elsewhere."""
    return os.environ.get("SPACE_ID") if on_space() else None


PUBLIC_SPACE_VAR = "PHI3SPACE_PUBLIC_SPACE"


def public_space() -> str | None:
    """The Space a card's "Train again" opens: the one this runs in, else the one ``PHI3SPACE_PUBLIC_SPACE`` names
    (owner/name: where a CLI or Jobs user's cards should send people); None: the card gives terminal lines only."""
    return space_id() or os.environ.get(PUBLIC_SPACE_VAR, "").strip() or None


