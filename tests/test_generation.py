"""GenerationSettings is the one owner of the chat's generation defaults and ranges: the engine, the CLI's chat
flags, the /chat API endpoint and the chat tab's sliders all take theirs from it."""

import ast
import inspect
import math
from dataclasses import fields
from pathlib import Path

import pytest

from phi3space import cli, generation
from phi3space.errors import ConfigError
from phi3space.generation import DEFAULTS, MAX_NEW_TOKENS, GenerationSettings

NAMES = [f.name for f in fields(GenerationSettings)]


def test_defaults():
    assert DEFAULTS == GenerationSettings(max_new_tokens=256, temperature=0.0, top_p=1.0)
    assert DEFAULTS.as_kwargs() == {"max_new_tokens": 256, "temperature": 0.0, "top_p": 1.0}
    assert DEFAULTS.generate_kwargs() == {"do_sample": False}  # greedy
    assert GenerationSettings(temperature=0.7, top_p=0.9).generate_kwargs() == \
        {"do_sample": True, "temperature": 0.7, "top_p": 0.9}
    for f in fields(GenerationSettings):
        assert f.metadata["help"] and f.metadata["range"].allows(f.default), f.name


@pytest.mark.parametrize("name,value,message", [
    ("max_new_tokens", 0, "max_new_tokens: 0 must be at least 1"),
    ("max_new_tokens", -5, "max_new_tokens: -5 must be at least 1"),
    ("max_new_tokens", 2.5, "max_new_tokens: 2.5 is not a whole number (expected at least 1)"),
    ("max_new_tokens", "lots", "max_new_tokens: 'lots' is not a whole number"),
    ("max_new_tokens", True, "max_new_tokens: True is not a whole number"),
    ("max_new_tokens", math.nan, "max_new_tokens: nan must be at least 1"),
    ("temperature", -0.01, "temperature: -0.01 must be in [0, 2] (0 = greedy)"),
    ("temperature", 2.01, "temperature: 2.01 must be in [0, 2] (0 = greedy)"),
    ("temperature", math.inf, "temperature: inf must be in [0, 2]"),
    ("temperature", "hot", "temperature: 'hot' is not a number (expected in [0, 2])"),
    ("top_p", 0, "top_p: 0.0 must be in (0, 1]"),
    ("top_p", -0.1, "top_p: -0.1 must be in (0, 1]"),
    ("top_p", 1.01, "top_p: 1.01 must be in (0, 1]"),
    ("top_p", math.nan, "top_p: nan must be in (0, 1]"),
])
def test_every_bound_is_refused_with_one_clear_message(name, value, message):
    with pytest.raises(ConfigError) as err:
        GenerationSettings.checked(**{name: value})
    assert err.value.problems == [err.value.message] and err.value.message.startswith(message), err.value.message
    assert "Defaults: max_new_tokens 256, temperature 0, top_p 1" in err.value.hint


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as err:
        GenerationSettings(max_new_tokens=0, temperature=9.0, top_p=0.0)
    assert [p.split(":")[0] for p in err.value.problems] == NAMES
    with pytest.raises(ConfigError, match="unknown generation setting 'max_tokens'"):
        GenerationSettings.checked(max_tokens=5)


def test_the_ends_of_each_range_are_allowed_and_a_longer_reply_is_lowered():
    assert GenerationSettings(max_new_tokens=1, temperature=2.0, top_p=1e-9).max_new_tokens == 1
    assert GenerationSettings(max_new_tokens=10**6).max_new_tokens == MAX_NEW_TOKENS
    assert GenerationSettings.checked(max_new_tokens="1e9").max_new_tokens == MAX_NEW_TOKENS
    assert GenerationSettings(max_new_tokens=512).capped(256).max_new_tokens == 256
    assert GenerationSettings(max_new_tokens=16).capped(256).max_new_tokens == 16


def test_a_request_may_send_numbers_as_text_and_leave_settings_out():
    settings = GenerationSettings.checked(max_new_tokens="16", temperature=" 0.5 ", top_p=None)
    assert settings == GenerationSettings(max_new_tokens=16, temperature=0.5, top_p=DEFAULTS.top_p)
    assert type(settings.max_new_tokens) is int and type(settings.temperature) is float
    assert GenerationSettings.checked(max_new_tokens=256.0).max_new_tokens == 256  # a slider's value


def test_the_chat_tabs_sliders_span_the_engines_ranges():
    import gradio as gr

    from phi3space.ui import chat_tab

    with gr.Blocks() as page:
        chat_tab.build()
    sliders = {b.elem_id: b for b in page.blocks.values() if isinstance(b, gr.Slider)}
    for name in NAMES:
        slider = sliders[f"chat-{name.replace('_', '-')}"]
        rng, step = GenerationSettings.range_of(name), slider.step
        assert (slider.minimum, slider.maximum) == chat_tab.slider_span(name)
        assert slider.value == getattr(DEFAULTS, name)
        # The slider's ends are the range's (one step inside an open end): every value it offers is allowed ...
        assert slider.minimum == (rng.low + step if rng.low_open else rng.low)
        assert slider.maximum == (rng.high - step if rng.high_open else rng.high)
        GenerationSettings.checked(**{name: slider.minimum})
        GenerationSettings.checked(**{name: slider.maximum})
        # ... and just past its lower end, the engine refuses.
        with pytest.raises(ConfigError, match=name):
            GenerationSettings.checked(**{name: rng.low if rng.low_open else rng.low - step})
    assert sliders["chat-max-new-tokens"].maximum == MAX_NEW_TOKENS
    assert sliders["chat-temperature"].maximum == 2  # the page once went to 2 and the engine to 5


def test_the_cli_chat_flags_take_their_defaults_and_help_from_the_settings():
    parser = cli.build_parser()
    args = parser.parse_args(["chat"])
    assert {name: getattr(args, name) for name in NAMES} == DEFAULTS.as_kwargs()
    chat = next(a for a in parser._subparsers._group_actions[0].choices["chat"]._actions if a.dest == "temperature")
    assert chat.help == GenerationSettings.describe("temperature") and "[0, 2]" in chat.help
    assert parser.parse_args(["chat", "--max-new-tokens", "16", "--top-p", "0.5"]).max_new_tokens == 16


def test_the_cli_refuses_bad_settings_before_any_model_loads(capsys):
    assert cli.main(["chat", "--base", "no/such-model", "--temperature", "3", "--top-p", "0", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert "temperature: 3.0 must be in [0, 2]" in err and "top_p: 0.0 must be in (0, 1]" in err
    assert "hint: Defaults:" in err


def test_the_engine_and_the_api_take_their_defaults_from_the_settings():
    from phi3space.chat.engine import ChatEngine
    from phi3space.ui import api

    for fn in (ChatEngine.stream, api.chat):
        params = inspect.signature(fn).parameters
        assert {name: params[name].default for name in NAMES} == DEFAULTS.as_kwargs(), fn
    assert list(inspect.signature(api.chat).parameters)[:6] == ["adapter", "message", "system", *NAMES]
    engine = ChatEngine.__new__(ChatEngine)  # no model: the settings are checked first
    with pytest.raises(ConfigError, match=r"temperature: 5.0 must be in \[0, 2\]"):
        next(engine.stream([{"role": "user", "content": "hi"}], temperature=5.0))


def test_anonymous_replies_are_no_longer_than_the_default():
    from phi3space.ui import chat_service

    assert chat_service.ANONYMOUS_MAX_NEW_TOKENS == DEFAULTS.max_new_tokens


def test_generation_is_a_floor_module():
    """It imports nothing of the project but other floor modules (errors, ranges): every layer may use it."""
    tree = ast.parse(Path(generation.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {m for m in imported if m.startswith("phi3space")} == {"phi3space.errors", "phi3space.ranges"}
