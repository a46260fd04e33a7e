"""The web app: build_app() lays out the tabs and wires them; each tab lives in its own module.

Importing this package loads gradio but none of torch, transformers, trl, peft or datasets: those load when a
visitor first inspects a dataset or chats (training itself runs in a separate process).
"""

from __future__ import annotations

import gradio as gr

from .follow import Follower

TITLE = "phi3space: fine-tune Phi-3 with LoRA / QLoRA"
INTRO = ("Pick a dataset (a Hub ID or an uploaded file), inspect it, press **Start**, watch the loss fall, then chat "
         "with your adapter. Each run trains in its own process; runs wait in a queue, one per GPU.")
POLL_S = 1.0


def build_app() -> gr.Blocks:
    from . import api, chat_tab, jobs_view, train_tab
    from .common import UI_ONLY

    with gr.Blocks(title="phi3space") as demo:
        with gr.Row():
            gr.Markdown(f"# {TITLE}\n{INTRO}")
            if login_available():
                gr.LoginButton(scale=0, min_width=220)
            else:
                gr.Markdown("Local mode: runs use your HF_TOKEN (no sign-in here).", elem_id="local-mode")
        for problem in platform_problems():
            gr.Markdown(f"⚠️ **{problem}**", elem_id="platform-banner")
        follower = gr.State(Follower())
        timer = gr.Timer(POLL_S)
        with gr.Tabs() as tabs:
            with gr.Tab("Train", id="train"):
                train = train_tab.build(follower)
                jobs = jobs_view.build(timer, follower)
            with gr.Tab("Chat", id="chat"):
                chat = chat_tab.build()
        api.build()

        # Page load (and reload, on any device): follow the visitor's newest job again.
        demo.load(jobs_view.poll, [follower, gr.State(None)], jobs.outputs, api_visibility=UI_ONLY)
        demo.load(train_tab.default_push_to, train.push_to, train.push_to, api_visibility=UI_ONLY)
        demo.load(chat_tab.refresh_choices, chat.adapter, chat.adapter, api_visibility=UI_ONLY)
        jobs.chat_button.click(open_in_chat, [jobs.follower], [chat.adapter, tabs], api_visibility=UI_ONLY)
    return demo


def open_in_chat(follower: Follower, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None):
    """One click from a finished run to the chat tab, with its adapter chosen."""
    from .chat_tab import adapter_choices
    from .services import identify

    choices = adapter_choices(identify(profile, oauth_token).owner)
    value = follower.job_id if follower.job_id in {v for _, v in choices} else None
    if value is None:
        gr.Warning("This run has no adapter yet: wait for it to finish.")
        return gr.skip(), gr.skip()
    return gr.Dropdown(choices=choices, value=value), gr.Tabs(selected="chat")


def platform_problems() -> list[str]:
    """What this machine cannot do (ZeroGPU, a GPU torch cannot use), said once at start in the log and on the page."""
    from ..runtime import startup_report

    return startup_report()


def login_available() -> bool:
    """On a Space, always. Locally gradio mocks the login with the machine's own token (and asks the Hub who that
    is while building the page), so the button appears only when that works."""
    from ..hub import on_space

    if on_space():
        return True
    import httpx
    from huggingface_hub import get_token, whoami
    from huggingface_hub.errors import HfHubHTTPError

    if not get_token():
        return False
    try:
        return whoami().get("type") == "user"
    except (HfHubHTTPError, httpx.HTTPError, OSError, ValueError):  # offline or a bad token: no mock login
        return False


def launch_kwargs() -> dict:
    return dict(theme=gr.themes.Soft(), footer_links=["api", "gradio"])
