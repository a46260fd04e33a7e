"""The one rule for "a path on this machine, or a Hub ID?"."""

from __future__ import annotations

from pathlib import Path

# Names ending like this are files, never Hub IDs (a Hub ID has no such suffix in practice).
FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".yaml", ".yml", ".txt", ".safetensors")


def is_local_ref(ref: str) -> bool:
    """The one rule for "a path on this machine, or a Hub ID?": a path exists here, starts like one (/ . ~), has
    more than one '/', or ends like a file; everything else (owner/name, or a bare legacy name) is a Hub ID."""
    ref = (ref or "").strip()
    return (ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or ref.lower().endswith(FILE_SUFFIXES)
            or Path(ref).expanduser().exists())


def is_hub_id(ref: str) -> bool:
    """'owner/name' that is not a path on this machine."""
    return bool(ref) and ref.count("/") == 1 and not is_local_ref(ref)

