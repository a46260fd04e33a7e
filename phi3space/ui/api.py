"""Named API endpoints for gradio_client: /submit_job, /job_status, /cancel_job, /resume_job, /chat.

Identity as in the page: the session's OAuth profile, else the owner of the token a client passes with
``Client(url, oauth_token=...)``, else (off a Space) the local owner. Every endpoint checks that the job is the
caller's; another visitor's job reads as "not found".
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import gradio as gr

from .. import config as config_mod
from ..hub import on_space
from .chat_service import build_messages, resolve_for_visitor, stream_reply
from .common import api_errors
from .services import check_inputs_allowed, get_runner, identify


@api_errors
def submit_job(config_yaml: str, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None) -> str:
    """Queue a training run from a YAML run config (the format of `python -m phi3space train`); returns the job id.
    output.dir is chosen by the server."""
    visitor = identify(profile, oauth_token)
    owner = visitor.require_owner()
    cfg = config_mod.loads(config_yaml)
    check_inputs_allowed({"data.dataset": cfg.data.dataset, "model.base": cfg.model.base})
    return get_runner().submit(cfg, owner, visitor.token).id


@api_errors
def job_status(job_id: str, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None) -> str:
    """JSON: status (queued|running|completed|failed|cancelled), step, max_steps, loss, eval_loss, eta_s,
    adapter (run folder, or the Hub repo when pushed), repo_url, metrics, error, queue_position."""
    owner = identify(profile, oauth_token).require_owner()
    runner = get_runner()
    return json.dumps(runner.state(runner.get(job_id, owner)))


@api_errors
def cancel_job(job_id: str, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None) -> str:
    """Stop a job (a running one saves its adapter and ends as cancelled); returns its status as JSON."""
    owner = identify(profile, oauth_token).require_owner()
    runner = get_runner()
    return json.dumps(runner.state(runner.cancel(job_id, owner)))


@api_errors
def resume_job(job_id: str, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None) -> str:
    """Queue a failed or stopped job again, continuing from its newest checkpoint; returns its status as JSON."""
    visitor = identify(profile, oauth_token)
    runner = get_runner()
    return json.dumps(runner.state(runner.resume(job_id, visitor.require_owner(), visitor.token)))


@api_errors
def chat(adapter: str, message: str, system: str = "", max_new_tokens: int = 256, temperature: float = 0.0,
         top_p: float = 1.0, profile: gr.OAuthProfile | None = None,
         oauth_token: gr.OAuthToken | None = None) -> Iterator[str]:
    """Stream the reply of an adapter (a job id, run folder or Hub repo ID) to one message; greedy by default."""
    visitor = identify(profile, oauth_token)
    space = on_space()
    adapter_dir = resolve_for_visitor(adapter, visitor, get_runner(), space)
    yield from stream_reply(adapter_dir, None, build_messages([], message, system), visitor, space,
                            max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p))


def build() -> None:
    gr.api(submit_job, api_name="submit_job")
    gr.api(job_status, api_name="job_status")
    gr.api(cancel_job, api_name="cancel_job")
    gr.api(resume_job, api_name="resume_job")
    gr.api(chat, api_name="chat")
