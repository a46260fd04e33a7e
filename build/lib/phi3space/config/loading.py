"""Reading a run config: YAML files and text (size limits, encodings, aliases refused), ``--set KEY=VALUE``
overrides, access tokens refused, values coerced to each setting's type, then validated (``schema``).

Part of ``phi3space.config`` (imported from there).
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import errno
import stat
from pathlib import Path
from typing import Any

import yaml

from phi3space.config.fields import settings_of
from phi3space.config.schema import (
    ELSEWHERE,
    RunConfig,
    _allowed_keys,
    _show,
    _validate,
    default_run_name,
    section_classes,
)
from phi3space.errors import HF_TOKEN_SHAPE, ConfigError, looks_like_token

# A run config is a few dozen settings; anything bigger is the wrong file (or an attempt to exhaust memory).
MAX_CONFIG_BYTES = 64 * 1024

# A Hugging Face access token pasted into a setting. Configs are saved beside the run and pushed with the adapter,
# so such a value is refused, and never echoed.
HF_TOKEN_PATTERN = HF_TOKEN_SHAPE
TOKEN_HINT = ("Remove it: tokens go in HF_TOKEN or the sign-in, never in a config "
              "(and revoke it at https://huggingface.co/settings/tokens if the config was shared).")
_FILE_HINT = "Pass the path of a YAML run config, e.g. configs/example.yaml."


def _name(key: str) -> str:
    """A setting name for a message (names in a YAML file can be anything)."""
    return key if len(key) <= 60 and key.isprintable() else _show(key)


def _holds_token(value: Any) -> bool:
    if isinstance(value, str):
        return looks_like_token(value)
    if isinstance(value, dict):
        return any(_holds_token(k) or _holds_token(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return any(_holds_token(v) for v in value)
    return False


class _AliasRefused(yaml.MarkedYAMLError):
    """An alias (*name) in a run config: refused before it is expanded."""

    def __init__(self, anchor: str, mark):
        super().__init__(problem=f"alias *{anchor}", problem_mark=mark)
        self.anchor, self.line, self.column = anchor, mark.line + 1, mark.column + 1


class _Duplicate(yaml.constructor.ConstructorError):
    """A key written twice in one mapping."""


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (*name) while composing, before anything can expand, and reports values
    YAML cannot build (a date like 2024-13-45, an integer of 5000 digits) at their line."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasRefused(event.anchor, event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):  # a key written twice: YAML keeps the last silently; we say so
            seen: dict = {}
            for key_node, _ in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None and key in seen:
                    raise _Duplicate(
                        problem=f"{key!r} is written twice (first on line {seen[key] + 1}): only one can count",
                        problem_mark=key_node.start_mark)
                seen.setdefault(key, key_node.start_mark.line)
        return super().construct_mapping(node, deep)

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            why = str(exc).split(";")[0]  # not Python's advice on sys.set_int_max_str_digits
            raise yaml.constructor.ConstructorError(problem=f"cannot read the value: {why}",
                                                    problem_mark=node.start_mark) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error as one line: 'line 3, column 7: expected ...'."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(exc).split())


def _too_big(where: str, size: int) -> ConfigError:
    return ConfigError([f"{where} is {size:,} bytes, over the {MAX_CONFIG_BYTES // 1024} KiB limit for a run config"],
                       "A run config holds a few dozen settings: is this the right file?")


def _parse_yaml(text: str, where: str) -> dict:
    """YAML text -> a dict, refusing what a run config never needs: a huge text, aliases, deep nesting."""
    size = len(text.encode("utf-8", "replace"))
    if size > MAX_CONFIG_BYTES:
        raise _too_big(where, size)
    try:
        raw = yaml.load(text, Loader=_ConfigLoader)
    except _AliasRefused as exc:
        raise ConfigError([f"{where} uses the YAML alias *{exc.anchor} (line {exc.line}, column {exc.column}): "
                           "aliases are refused in run configs"],
                          "Write each value out in full: anchors and aliases (&name, *name) let a few bytes expand "
                          "into gigabytes.") from None
    except RecursionError:
        raise ConfigError([f"{where} is nested too deeply to be a run config"],
                          "A run config is two levels deep (section: setting: value): is this the right file?"
                          ) from None
    except _Duplicate as exc:
        raise ConfigError([f"{where}: {_yaml_problem(exc)}"],
                          "Write each section and setting once: merge the two into one.") from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{where} is not valid YAML ({_yaml_problem(exc)})"],
                          "Check the indentation and brackets near that line, e.g. training: {learning_rate: 2e-4}."
                          ) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        what = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}
        raise ConfigError([f"{where} must hold a mapping (model:, data:, lora:, training:, output:), not "
                           f"{what.get(type(raw), type(raw).__name__)} ({_show(raw, 30)})"],
                          "See configs/example.yaml for the layout.")
    return raw


def _decode(raw: bytes, where: str) -> str:
    hint = "Save the config as UTF-8 text (any editor's 'Save with encoding: UTF-8')."
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ConfigError([f"{where} is UTF-16 text; a run config must be UTF-8"], hint)
    if b"\0" in raw:
        raise ConfigError([f"{where} is a binary file, not YAML text"], "Is this the right file? " + _FILE_HINT)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError([f"{where} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line})"], hint) from None


def _read_config_file(p: Path) -> str:
    """The text of a config file, or a ConfigError that says what the path really is."""
    try:
        info = p.stat()
    except FileNotFoundError:
        problem = f"config file {p} is a link to a missing file" if p.is_symlink() else f"config file not found: {p}"
        raise ConfigError([problem], _FILE_HINT) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError([f"config path {p} is a symlink loop (following it leads back to itself)"],
                              "Point at the YAML file itself, or repair the link.") from None
        raise ConfigError([f"cannot read config file {p}: {exc.strerror}"], _FILE_HINT) from None
    if stat.S_ISDIR(info.st_mode):
        inside = sorted(p.glob("*.yaml")) + sorted(p.glob("*.yml"))
        raise ConfigError([f"config path {p} is a folder, not a file"],
                          f"Pass the YAML file inside it, e.g. {inside[0]}." if inside else _FILE_HINT)
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError([f"config path {p} is not a regular file"], _FILE_HINT)
    if info.st_size > MAX_CONFIG_BYTES:
        raise _too_big(str(p), info.st_size)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError([f"cannot read config file {p}: {exc.strerror}"], _FILE_HINT) from None
    return _decode(raw, str(p))


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError([f"--set {_show(item)}: expected KEY=VALUE, e.g. --set lora.r=8"])
    key, raw = (part.strip() for part in item.split("=", 1))
    if len(raw) > MAX_CONFIG_BYTES:
        raise _too_big(f"--set {_name(key)}", len(raw))
    try:
        value = yaml.load(raw, Loader=_ConfigLoader) if raw else None
    except _AliasRefused:
        raise ConfigError([f"--set {_name(key)}: the value uses a YAML alias (*name); aliases are refused"],
                          "Write the value out in full.") from None
    except (yaml.YAMLError, RecursionError):
        value = raw  # not YAML: the text itself (a path, a name)
    return key, value


def _suggest(key: str, cls: type[RunConfig] = RunConfig) -> str | None:
    """The setting someone probably meant: a known alias (lr), the same name in another section, or a near spelling."""
    allowed = _allowed_keys(cls)
    name = key.rsplit(".", 1)[-1].lower().replace("-", "_")
    if name in cls.aliases():
        return cls.aliases()[name]
    same_name = [k for k in allowed if k.endswith("." + name)]
    if len(same_name) == 1:
        return same_name[0]
    close = difflib.get_close_matches(key, allowed, n=1)
    return close[0] if close else None


_KINDS = {"int": int, "float": float, "bool": bool, "str": str, "dict": dict}


def _coerce(value: Any, f: dataclasses.Field, key: str, default: Any, problems: list[str]) -> Any:
    """Coerce a YAML/--set value to the field's type (numbers written as strings, '1e-4', ...).

    The type comes from the annotation: 'int | None' is an int that may be empty; 'Any' is checked in _validate.
    """
    names = [n.strip() for n in str(f.type).split("|")]
    kind = _KINDS.get(names[0])
    if kind is None:
        return value
    if kind is dict:
        return {} if value is None else value  # checked in _validate, with an example
    if value is None:
        if "None" in names:
            return None
        if default == "":
            return ""  # an empty text setting (data.dataset then reports itself as required)
        problems.append(f"{key}: needs a value (default: {default!r})")
        return default
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError  # true for a number, a list for a name, ...
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) else int(value)
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        problems.append(f"{key}: expected {kind.__name__}, got {_show(value)}")
        return default


def from_dict(raw: dict | None, overrides: list[str] | tuple[str, ...] = (), defaults: dict | None = None,
              cls: type[RunConfig] = RunConfig) -> RunConfig:
    """Build and validate a RunConfig (or ``cls``, a subclass with sections of its own) from a nested dict plus
    ``KEY=VALUE`` overrides; ``defaults`` (flat keys, e.g. {"output.push_to": "auto"} on a Space) stand in for
    settings the config leaves out. A section another layer defines (``ELSEWHERE``) and ``cls`` lacks is kept as
    written, unread.

    Raises:
        ConfigError: listing every unknown key and invalid value at once.
    """
    raw = dict(raw or {})
    sections = section_classes(cls)
    flat: dict[str, Any] = {}
    elsewhere: dict[str, dict] = {}
    for section, values in raw.items():
        if section in ELSEWHERE and section not in sections and isinstance(values, dict):
            elsewhere[section] = dict(values)
        elif section in sections and isinstance(values, dict):
            for k, v in values.items():
                flat[f"{section}.{k}"] = v
        elif values is not None or section not in sections:
            flat[str(section)] = values  # an unknown name, or a section that is not a mapping: reported below
    for item in overrides:
        key, value = _parse_override(item)
        section, _, name = key.partition(".")
        if section in ELSEWHERE and section not in sections and name:
            elsewhere.setdefault(section, {})[name] = value
        else:
            flat[key] = value
    for key, value in (defaults or {}).items():
        if flat.get(key) is None:
            flat[key] = value

    problems: list[str] = []
    refused: set[str] = set()  # keys already reported; _validate says nothing more about them
    tokens = False
    field_of = settings_of(sections)
    cfg = cls(elsewhere=elsewhere)
    for key, value in flat.items():
        if _holds_token(key) or _holds_token(value):
            tokens = True
            refused.add(key)
            problems.append(f"{_name(key)}: holds what looks like a Hugging Face access token (not shown here)")
        elif key in sections:
            problems.append(f"{key}: expected a mapping of settings, got {_show(value)}")
        elif key not in field_of:
            guess = _suggest(key, cls)
            problems.append(f"{_name(key)}: unknown setting" + (f" (did you mean {guess}?)" if guess else
                                                                 f"; known sections: {', '.join(sections)}"))
        else:
            section, name = key.split(".", 1)
            part = getattr(cfg, section)
            setattr(part, name, _coerce(value, field_of[key], key, getattr(part, name), problems))
    if cfg.hub_only and "output.push_checkpoints" not in flat:
        cfg.output.push_checkpoints = True  # a job's disk is gone when it ends: the Hub keeps what Resume needs
    problems += [p for p in _validate(cfg) if p.split(":", 1)[0] not in refused]
    if problems:
        raise ConfigError(problems, TOKEN_HINT if tokens else "")
    if not cfg.output.dir:
        cfg.output.dir = str(Path("runs") / default_run_name(cfg))
    return cfg


def load(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
         cls: type[RunConfig] = RunConfig) -> RunConfig:
    """Read a YAML run config (or start from defaults when ``path`` is None) and apply overrides (``cls``: as for
    ``from_dict``).

    The file must be UTF-8 YAML of at most MAX_CONFIG_BYTES, without aliases (*name).
    """
    raw: dict = {}
    if path is not None:
        p = Path(path)
        raw = _parse_yaml(_read_config_file(p), str(p))
    return from_dict(raw, overrides, cls=cls)


def loads(text: str, overrides: list[str] | tuple[str, ...] = (), defaults: dict | None = None,
          cls: type[RunConfig] = RunConfig) -> RunConfig:
    """Like ``load`` for YAML text (the web form and the API)."""
    return from_dict(_parse_yaml(text, "config"), overrides, defaults, cls)
