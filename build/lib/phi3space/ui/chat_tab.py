"""Chat tab: talk to one of your finished runs or any Hub adapter; compare mode answers with the base model too."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from phi3space.generation import DEFAULTS, GenerationSettings
from phi3space.hub.space import on_space
from phi3space.ui.chat_service import CHAT_CONCURRENCY, build_messages, resolve_for_visitor, stream_reply
from phi3space.ui.common import UI_ONLY, user_errors
from phi3space.ui.services import get_runner, identify, run_status

# The generation sliders: their labels and steps are the page's; their ends, starting values and notes are
# GenerationSettings' (one range for the page and the engine).
SLIDERS = {"max_new_tokens": ("Max new tokens", 1), "temperature": ("Temperature", 0.05), "top_p": ("Top-p", 0.05)}


@dataclass
class ChatTab:
    """What other parts of the page wire to in the chat tab: its adapter picker."""

    adapter: gr.Dropdown


def slider_span(name: str) -> tuple[float, float]:
    """A generation setting's range as its slider spans it: the range's ends, or one step inside an open end (a
    slider has no open ends)."""
    rng, step = GenerationSettings.range_of(name), SLIDERS[name][1]
    return rng.low + step if rng.low_open else rng.low, rng.high - step if rng.high_open else rng.high


def _slider(name: str) -> gr.Slider:
    label, step = SLIDERS[name]
    low, high = slider_span(name)
    return gr.Slider(low, high, value=getattr(DEFAULTS, name), step=step, label=label,
                     info=GenerationSettings.range_of(name).note or None, elem_id=f"chat-{name.replace('_', '-')}")


def adapter_choices(owner: str | None) -> list[tuple[str, str]]:
    """The visitor's runs that left an adapter, newest first (value: the job id)."""
    if owner is None:
        return []
    runner = get_runner()
    out = []
    for job in reversed(runner.list(owner)):
        status, state = run_status(job)
        if state.can_chat:  # in its folder, or only on the Hub
            note = " (stopped early)" if status == "cancelled" else " (not pushed yet)" if state.push_pending else ""
            out.append((f"{job.name} · {job.id}{note}", job.id))
    return out


def refresh_choices(current: str | None, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None):
    """The adapter picker with the visitor's current runs, keeping ``current``."""
    return gr.Dropdown(choices=adapter_choices(identify(profile, oauth_token).owner), value=current or None)


@user_errors
def respond(adapter: str, system: str, max_new_tokens: float, temperature: float, top_p: float, compare: bool,
            message: str, history: list, base_history: list,
            profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None):
    """Stream the adapter's reply (then, in compare mode, the base model's) into the chat windows."""
    if not message or not message.strip():
        return
    visitor = identify(profile, oauth_token)
    space = on_space()
    adapter_dir = resolve_for_visitor(adapter, visitor, get_runner(), space)
    settings = GenerationSettings.checked(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    history = list(history or []) + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
    base_history = list(base_history or [])
    if compare:
        base_history += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
    for text in stream_reply(adapter_dir, None, build_messages(history[:-2], message, system), visitor, space, settings):
        history[-1]["content"] = text
        yield history, base_history, ""
    if compare:
        from phi3space.engine.adapters import adapter_base

        base = adapter_base(adapter_dir)
        for text in stream_reply(None, base, build_messages(base_history[:-2], message, system), visitor, space, settings):
            base_history[-1]["content"] = text
            yield history, base_history, ""


def build() -> ChatTab:
    """Lay out the chat tab (adapter, settings, replies beside the base model's) and wire its events."""
    with gr.Row():
        adapter = gr.Dropdown(label="Adapter", info="One of your finished runs, or a Hub adapter repo ID (user/name).",
                              choices=[], allow_custom_value=True, scale=3, min_width=260, elem_id="chat-adapter")
        compare = gr.Checkbox(label="Compare with the base model", value=False, scale=1, elem_id="chat-compare",
                              elem_classes=["switch"])
    with gr.Accordion("Generation settings", open=False):
        system = gr.Textbox(label="System prompt", placeholder="You are a helpful assistant.")
        with gr.Row():
            max_new_tokens, temperature, top_p = (_slider(name) for name in SLIDERS)
    with gr.Row():
        chatbot = gr.Chatbot(label="Adapter", height=360, buttons=["copy"], elem_id="chat-adapter-replies")
        base_chatbot = gr.Chatbot(label="Base model", height=360, visible=False, elem_id="chat-base-replies")
    with gr.Row():
        message = gr.Textbox(placeholder="Ask something…", show_label=False, scale=5, elem_id="chat-message")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
        clear = gr.Button("Clear", scale=1, elem_id="chat-clear")
    inputs = [adapter, system, max_new_tokens, temperature, top_p, compare, message, chatbot, base_chatbot]
    outputs = [chatbot, base_chatbot, message]
    gr.on([send.click, message.submit], respond, inputs, outputs, api_visibility=UI_ONLY, **CHAT_CONCURRENCY)
    compare.change(lambda on: gr.Chatbot(visible=on), compare, base_chatbot, api_visibility=UI_ONLY)
    clear.click(lambda: ([], []), None, [chatbot, base_chatbot], api_visibility=UI_ONLY)
    adapter.focus(refresh_choices, adapter, adapter, show_progress="hidden", api_visibility=UI_ONLY)
    return ChatTab(adapter)
