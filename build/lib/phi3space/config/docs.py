"""The run config reference: a markdown table of every setting, its default and its help text (the README's
"Run config reference"; ``python -m phi3space config`` prints it).

Part of ``phi3space.config`` (imported from there).
"""

from __future__ import annotations

from typing import Any

import yaml

from phi3space.config.fields import settings_of, value_at
from phi3space.config.schema import RunConfig, section_classes


def reference(cls: type[RunConfig] = RunConfig) -> str:
    """The run config reference as a markdown table, from each field's default and help text (``cls``: a subclass
    with sections of its own; the README's "Run config reference" is ``python -m phi3space config``'s, with where
    the run trains)."""
    def shown(value: Any) -> str:
        if value in (None, "", {}) and not isinstance(value, bool):
            return ""
        return f"`{yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}`"

    defaults = cls()
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, f in settings_of(section_classes(cls)).items():
        help = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if choices:
            help += " One of: " + ", ".join(f"`{c}`" for c in choices) + "."
        if "range" in f.metadata:
            help += f" Range: {f.metadata['range']}."
        help = help.replace("<", "&lt;").replace(">", "&gt;")
        lines.append(f"| `{key}` | {shown(value_at(defaults, key))} | {help} |")
    return "\n".join(lines) + "\n"
