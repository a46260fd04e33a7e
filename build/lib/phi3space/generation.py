"""GenerationSettings: how a chat reply is written (length, temperature, top-p), the one owner of their defaults
and ranges.

The chat engine, the CLI's ``chat`` flags, the /chat API endpoint and the chat tab's sliders all derive from it:
each field carries its help text in ``metadata["help"]`` and its allowed values in ``metadata["range"]``, like the
run config's settings. A GenerationSettings is valid once built: the constructor refuses (ConfigError, every bad
setting named with its range) what the engine cannot use, and lowers a reply length above MAX_NEW_TOKENS to it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from phi3space.errors import ConfigError
from phi3space.ranges import Range, num

# The longest reply a shared server writes (the README states it); a longer max_new_tokens is lowered to this.
MAX_NEW_TOKENS = 1024


def _f(default: Any, help: str, range: Range, capped: bool = False) -> Any:
    """A field with its help text and range; ``capped``: a value above the range is lowered to its top, not refused."""
    return field(default=default, metadata={"help": help, "range": range, "capped": capped})


@dataclass(frozen=True)
class GenerationSettings:
    """How a chat reply is written; valid once built (ConfigError names every bad setting)."""

    max_new_tokens: int = _f(256, f"Longest reply, in new tokens (at most {MAX_NEW_TOKENS}: more is lowered to that); "
                                  "a reply also ends at Phi-3's end-of-turn token.",
                             Range(1, MAX_NEW_TOKENS, f"more than {MAX_NEW_TOKENS} is lowered to {MAX_NEW_TOKENS}"),
                             capped=True)
    temperature: float = _f(0.0, "How varied replies are: 0 = greedy (the likeliest token each time, the same reply "
                                 "every time), higher = more varied.", Range(0, 2, "0 = greedy"))
    top_p: float = _f(1.0, "Nucleus sampling: draw from the likeliest tokens whose probabilities add up to top_p "
                           "(1 = all of them); used only when temperature is above 0.",
                      Range(0, 1, "1 = all tokens", low_open=True))

    def __post_init__(self):
        problems = []
        for f in fields(self):
            value, problem = _checked_value(f, getattr(self, f.name))
            if problem:
                problems.append(problem)
            else:
                object.__setattr__(self, f.name, value)
        if problems:
            raise ConfigError(problems, _HINT)

    @classmethod
    def checked(cls, **values: Any) -> GenerationSettings:
        """Settings from what a person or a client sent: numbers, or numbers as text (a web form, an API call); a
        value that is missing or None keeps its default.

        Raises:
            ConfigError: naming every bad (or unknown) setting and its range.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError([f"unknown generation setting {name!r}" for name in unknown],
                              f"The generation settings are {', '.join(sorted(names))}.")
        return cls(**{name: _number(value) for name, value in values.items() if value is not None})

    def as_kwargs(self) -> dict:
        """max_new_tokens, temperature and top_p, as keyword arguments (ChatEngine.stream takes them so)."""
        return asdict(self)

    def generate_kwargs(self) -> dict:
        """What transformers' generate() takes for these settings: greedy at temperature 0, else sampling."""
        if self.temperature == 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}

    def capped(self, max_new_tokens: int) -> GenerationSettings:
        """These settings with replies of at most ``max_new_tokens`` (a server's policy for some callers)."""
        return replace(self, max_new_tokens=min(self.max_new_tokens, max_new_tokens))

    @staticmethod
    def describe(name: str) -> str:
        """A setting's help, range and default in one line (the CLI's help for its flag)."""
        f = _field(name)
        return f"{f.metadata['help']} Allowed: {_expected(f)}. Default: {num(f.default)}."

    @staticmethod
    def range_of(name: str) -> Range:
        """A setting's allowed values (what the chat tab's sliders span)."""
        return _field(name).metadata["range"]


def _field(name: str):
    try:
        return next(f for f in fields(GenerationSettings) if f.name == name)
    except StopIteration:
        raise KeyError(name) from None


_HINT = ("Defaults: " + ", ".join(f"{f.name} {num(f.default)}" for f in fields(GenerationSettings))
         + "; for more varied replies, e.g. temperature 0.7.")


def _expected(f) -> str:
    """The allowed values of a field, in words: 'at least 1' (capped) or '[0, 2]'."""
    rng: Range = f.metadata["range"]
    if f.metadata["capped"]:
        return f"at least {num(rng.low)}" if not rng.low_open else f"above {num(rng.low)}"
    return f"in {rng}"


def _allowed(f) -> str:
    """``_expected`` and the range's note: 'in [0, 2] (0 = greedy)'."""
    note = f.metadata["range"].note
    return f"{_expected(f)} ({note})" if note else _expected(f)


def _checked_value(f, value: Any) -> tuple[Any, str | None]:
    """(the value as the field holds it, None), or (None, what is wrong with it)."""
    rng: Range = f.metadata["range"]
    whole = f.type in (int, "int")
    kind = "a whole number" if whole else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"{f.name}: {value!r} is not {kind} (expected {_expected(f)})"
    if not math.isfinite(value):
        return None, f"{f.name}: {value!r} must be {_allowed(f)}"
    if whole:
        if not float(value).is_integer():
            return None, f"{f.name}: {value!r} is not {kind} (expected {_expected(f)})"
        value = int(value)
    else:
        value = float(value)
    if rng.allows(value):
        return value, None
    if f.metadata["capped"] and value > rng.high:
        return type(value)(rng.high), None
    return None, f"{f.name}: {value!r} must be {_allowed(f)}"


def _number(value: Any) -> Any:
    """Text that holds a number, as that number (what a web client sends); anything else as it is."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value


DEFAULTS = GenerationSettings()  # what a reply gets when nothing is asked (each caller's defaults)
