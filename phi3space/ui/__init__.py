"""The web app: build_app() lays out the tabs and wires them; each tab lives in its own module.

Importing this package loads gradio but none of torch, transformers, trl, peft or datasets: those load when a
visitor first inspects a dataset or chats (training itself runs in a separate process).
"""

from __future__ import annotations

import os
import sys

import gradio as gr

from phi3space.ui.common import user_errors
from phi3space.ui.follow import Follower

TITLE = "phi3space: fine-tune Phi-3 with LoRA / QLoRA"
INTRO = ("Pick a dataset (a Hub ID or an uploaded file), inspect it, press **Start**, watch the loss fall, then chat "
         "with your adapter. Each run trains in its own process; runs wait in a queue, one per GPU.")
DEMO_TEXT = (
    "**Demo mode** (this machine has no CUDA GPU): the form starts with a *tiny* Phi-3 (8.5 M parameters, random "
    "weights, built here with Phi-3's real tokenizer) and a demo dataset shipped with the app: 32 questions and answers "
    "about Vellmora, an island made up for it. Press **Start training**: it learns the answers by heart in a few "
    "minutes on a CPU. Then ask the **Chat** tab *What is the capital of Vellmora?* (one question at a time: press "
    "**Clear** between them, a model this small learned single questions), **Evaluate** the run against its base, or "
    "**Export** it to GGUF. It shows the whole flow, not a useful model. To fine-tune the real Phi-3-mini, pick it "
    "under **Base model** and name a dataset (it needs a GPU), or start the app with `PHI3SPACE_DEMO=0`.")


def build_app() -> gr.Blocks:
    """The whole web page: the Train and Chat tabs, the job views, and the API endpoints (not yet launched)."""
    from phi3space.ui import after_view, api, chat_tab, jobs_view, train_tab
    from phi3space.ui.common import UI_ONLY
    from phi3space.ui.services import demo_settings

    start = demo_settings()
    with gr.Blocks(title="phi3space") as demo:
        with gr.Row(elem_id="header", equal_height=False):
            gr.Markdown(f"# {TITLE}\n{INTRO}")
            if login_available():
                gr.LoginButton(scale=0, min_width=220, elem_classes=["login"])
            else:
                gr.Markdown(local_mode_text(), elem_id="local-mode")
        if start:
            gr.Markdown(DEMO_TEXT, elem_id="demo-banner")
        for problem in platform_problems():
            gr.Markdown(f"⚠️ **{problem}**", elem_id="platform-banner")
        follower = gr.State(Follower())
        seen = gr.State(None)  # the job list as last drawn (jobs_view.poll)
        timer = gr.Timer(jobs_view.POLL_S)
        with gr.Tabs() as tabs:
            with gr.Tab("Train", id="train"):
                train = train_tab.build(follower, seen, start)
                jobs = jobs_view.build(timer, follower, seen)
                after_view.build(timer, follower, seen)
            with gr.Tab("Chat", id="chat"):
                chat = chat_tab.build()
        api.build()

        # Page load (and reload, on any device): the form as this browser left it, the job it followed.
        demo.load(train_tab.restore, train.memory, train.restored, api_visibility=UI_ONLY)
        demo.load(jobs_view.load, [follower, jobs.job_memory], jobs.outputs, api_visibility=UI_ONLY)
        demo.load(chat_tab.refresh_choices, chat.adapter, chat.adapter, api_visibility=UI_ONLY)
        jobs.chat_button.click(open_in_chat, [jobs.follower], [chat.adapter, tabs], api_visibility=UI_ONLY)
    return demo


@user_errors
def open_in_chat(follower: Follower, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None):
    """One click from a finished run (or a job on it: its eval, export or merge) to the chat tab, its adapter chosen."""
    from phi3space.ui.chat_tab import adapter_choices
    from phi3space.ui.services import acted_on, get_runner, identify

    owner = identify(profile, oauth_token).owner
    choices = adapter_choices(owner)
    run, state = None, None
    if owner and follower.job_id:
        runner = get_runner()
        run, state = acted_on(runner.get(follower.job_id, owner), runner.list(owner))
    if run is not None and run.id in {v for _, v in choices}:
        return gr.Dropdown(choices=choices, value=run.id), gr.Tabs(selected="chat")
    gr.Warning(no_adapter_text(state.status if state else None))
    return gr.skip(), gr.skip()


def no_adapter_text(status: str | None) -> str:
    """Why the followed run cannot be opened in the chat, by its status."""
    if status in ("queued", "running"):
        return "This run is still training: its adapter appears when it finishes (or when you stop it)."
    if status == "failed":
        return "This run failed before saving an adapter: see its log, resume it from its last checkpoint, or start again."
    if status in ("completed", "cancelled"):
        return "This job left no adapter to chat with (a merge job pushes a full model instead)."
    return "No run is selected: start one, or pick one under 'Follow job'."


def local_mode_text() -> str:
    """The header's note off a Space (no sign-in): whose token runs use, and what works without one."""
    from phi3space.hub.auth import resolve_token

    if resolve_token() and _hub_unreachable:
        return ("Local mode, offline: the Hugging Face Hub cannot be reached, so runs on local data and models work, "
                "and pushing, Hub datasets and private repos wait until it can (restart the app then).")
    if resolve_token():
        return "Local mode: runs use this machine's Hugging Face login (HF_TOKEN or `hf auth login`)."
    return ("Local mode, no Hugging Face token on this machine: runs on this machine's files (the demo's too) and "
            "on public Hub datasets and models work; pushing to the Hub, and private or gated repos, need "
            "`hf auth login` or HF_TOKEN (then restart the app).")


def platform_problems() -> list[str]:
    """What this machine cannot do (ZeroGPU, a GPU torch cannot use), said once at start in the log and on the page."""
    from phi3space.engine.hardware import startup_report

    return startup_report()


def login_available() -> bool:
    """On a Space, always. Locally gradio mocks the login with the machine's own token (and asks the Hub who that
    is while building the page), so the button appears only when that works."""
    from phi3space.hub.space import on_space

    if on_space():
        return True
    from huggingface_hub import get_token, whoami
    from huggingface_hub.errors import HfHubHTTPError

    from phi3space.hub.errors import is_transient

    global _hub_unreachable
    if not get_token():
        return False
    try:
        return whoami().get("type") == "user"
    except Exception as exc:  # offline or a bad token: no mock login, and the page says why
        if is_transient(exc):
            _hub_unreachable = True
            print("phi3space: the Hugging Face Hub cannot be reached: signing in and pushing wait until it can",
                  file=sys.stderr)
            return False
        if isinstance(exc, (HfHubHTTPError, OSError, ValueError)):
            return False
        raise


_hub_unreachable = False  # found at start (login_available): the page says so


def server_name() -> str:
    """Where the server listens: GRADIO_SERVER_NAME when set; on a Space every interface (its proxy must reach
    it); elsewhere only this machine, since off a Space the form accepts paths on the server as inputs."""
    from phi3space.hub.space import on_space

    return os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if on_space() else "127.0.0.1")


def launch_kwargs(**overrides) -> dict:
    """Everything launch() needs besides the port: theme, the page's CSS and script, the address to listen on."""
    from phi3space.ui.style import CSS, JS

    return {"theme": gr.themes.Soft(), "css": CSS, "js": JS, "footer_links": ["api", "gradio"],
            "server_name": server_name(), **overrides}
