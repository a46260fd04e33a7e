"""The one rule for "a path on this machine, or a Hub ID?", and for "a well-formed Hub repo ID?"."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from phi3space.errors import ConfigError, looks_like_token

# Names ending like this are files, never Hub IDs (a Hub ID has no such suffix in practice).
FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".yaml", ".yml", ".txt", ".safetensors")
# owner/name as the Hub spells a repo (or bucket) ID: letters, digits, '-', '_' and '.', the owner not starting
# with a sign.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


MAX_REF_CHARS = 1000  # far above any Hub ID (owner/name: at most 96 + 96) or a sensible path


def is_local_ref(ref: str) -> bool:
    """The one rule for "a path on this machine, or a Hub ID?": a path exists here, starts like one (/ . ~), has
    more than one '/', or ends like a file; everything else (owner/name, or a bare legacy name) is a Hub ID."""
    ref = (ref or "").strip()
    return (ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or ref.lower().endswith(FILE_SUFFIXES)
            or _exists(ref))


def _exists(ref: str) -> bool:
    try:
        return Path(ref).expanduser().exists()
    except (OSError, ValueError):  # a name too long for the file system, or one with a NUL in it
        return False


def ref_problem(ref: str, what: str, hub: bool = True) -> str | None:
    """Why ``ref`` can be neither a Hub ID nor a path (too long, a control character, an access token pasted by
    mistake, or shaped like a Hub ID the Hub never accepts), or None. ``hub``: False for a value that can only be a
    path (output.dir)."""
    if not isinstance(ref, str):
        return None
    if len(ref) > MAX_REF_CHARS:
        return f"{what}: {len(ref):,} characters is too long for a Hub ID or a path (at most {MAX_REF_CHARS:,})"
    if looks_like_token(ref):
        return f"{what}: that looks like a Hugging Face access token (not shown here), not a Hub ID or a path"
    odd = next((c for c in ref if unicodedata.category(c) in ("Cc", "Cs")), None)
    if odd is not None:  # a NUL, a newline, an escape: no file name or Hub ID holds one, and a file system drops some
        return f"{what}: {ref!r} holds the control character {odd!r}; a Hub ID or a path has none"
    if hub and is_hub_id(ref) and not _hub_accepts(ref):
        return (f"{what}: {ref!r} is not a valid Hub ID (letters, digits, '-', '_' and '.'; no '--' or '..'; not "
                "starting or ending with '-' or '.'; at most 96 characters a part)")
    return None


def _hub_accepts(repo_id: str) -> bool:
    """huggingface_hub's own rule for a repo ID (it refuses the rest before any request)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return True


def is_hub_id(ref: str) -> bool:
    """'owner/name' that is not a path on this machine."""
    return bool(ref) and ref.count("/") == 1 and not is_local_ref(ref)


def is_repo_id(name: str) -> bool:
    """A well-formed Hub repo ID, owner/name, for a value that can only name a repo (where a model is pushed, the
    bucket the app copies to): the form alone decides, no path rule applies."""
    return isinstance(name, str) and bool(_REPO_ID.fullmatch(name)) and _hub_accepts(name)


def check_repo_id(name: str, what: str, example: str = "your-name/my-model", hint: str = "") -> str:
    """``name`` (stripped) when it is a well-formed Hub repo ID (is_repo_id).

    Raises:
        ConfigError: "``what``: 'name' is not a Hub repo ID like ``example``".
    """
    name = (name or "").strip()
    if not is_repo_id(name):
        raise ConfigError([f"{what}: {name!r} is not a Hub repo ID like {example}"], hint or f"Give owner/name, e.g. {example}.")
    return name
