"""One home for each setting: ``setting()`` declares a run config field with everything said about it, and the
tables other parts read (ranges, aliases, the web form's groups) are derived from those declarations.

Like trl's ``SFTConfig`` (``field(metadata={"help": ...})``), a setting's help text, allowed values, the names other
tools use for it and how the web form shows it live in the dataclass field's ``metadata``; nothing repeats them.
Adding a setting is one ``setting(...)`` field in ``schema``: the YAML reader, the validation, the reference table,
the suggestions for a misspelt key and the web form follow.

Part of ``phi3space.config``; nothing here knows a particular setting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from phi3space.ranges import Range

SECTION = "(its section)"  # a setting's form group when none is given: the group named like its section


def setting(default: Any, help: str, *, range: Range | None = None, choices: tuple = (), step: float | None = None,
            group: str | None = SECTION, aliases: tuple[str, ...] = (), placeholder: str | None = None) -> Any:
    """A run config field with its default and everything else said about it, kept in the field's ``metadata``.

    Args:
        default: the value when the config leaves the setting out (a list or dict is copied for each config).
        help: one or two sentences for the reference table, ``--help`` and the form's hint.
        range: the allowed values of a number (checked before any model loads).
        choices: the allowed values of a name.
        step: the form's spinner step for a fractional number (the browser's default step of 1 jumps over every
            useful value).
        group: the form group that shows it (default: the one named like its section); None keeps it out of the
            form (the server chooses it).
        aliases: what other tools (transformers, trl, peft, axolotl, ...) call it, offered when someone writes one.
        placeholder: what an empty form field means, or an example, shown inside it.
    """
    given = {"range": range, "choices": tuple(choices), "step": step, "aliases": tuple(aliases),
             "placeholder": placeholder}
    metadata = {"help": help, **{k: v for k, v in given.items() if v not in (None, ())}}
    if group != SECTION:
        metadata["group"] = group
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def settings_of(sections: Mapping[str, type]) -> dict[str, dataclasses.Field]:
    """Every setting of the config sections ``{name: dataclass}``, keyed 'section.name', in declaration order."""
    return {f"{section}.{f.name}": f for section, cls in sections.items() for f in dataclasses.fields(cls)}


def ranges_of(settings: Mapping[str, dataclasses.Field]) -> dict[str, Range]:
    """'section.name' -> its allowed range, for the settings that have one."""
    return {key: f.metadata["range"] for key, f in settings.items() if "range" in f.metadata}


def aliases_of(settings: Mapping[str, dataclasses.Field]) -> dict[str, str]:
    """What other tools call our settings -> 'section.name'.

    Raises:
        ValueError: one alias given to two settings (a mistake in the declarations).
    """
    found: dict[str, str] = {}
    for key, f in settings.items():
        for alias in f.metadata.get("aliases", ()):
            if found.setdefault(alias, key) != key:
                raise ValueError(f"alias {alias!r} is given to both {found[alias]} and {key}")
    return found


def group_of(key: str, f: dataclasses.Field) -> str | None:
    """The form group that shows setting ``key`` ('section.name'), or None when the form leaves it out."""
    return f.metadata.get("group", key.split(".")[0])


def value_at(cfg: Any, key: str) -> Any:
    """The value of setting ``key`` ('section.name') in a config."""
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)
