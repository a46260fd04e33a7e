"""Named API endpoints for gradio_client: /submit_job, /plan_job, /job_status, /list_jobs, /cancel_job, /resume_job,
/push_again, /evaluate_job, /export_job, /chat.

Identity as in the page: the session's OAuth profile, else the owner of the token a client passes with
``Client(url, oauth_token=...)``, else (off a Space) the local owner. Every endpoint checks that the job is the
caller's; another visitor's job reads as "not found". On a Space, a visitor's first call after a restart brings
their runs back from the Hub (services.signed_in), so the job ids they hold answer again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import gradio as gr

from phi3space.generation import DEFAULTS, GenerationSettings
from phi3space.hub.space import on_space
from phi3space.jobs import spec as job_spec
from phi3space.jobs.followups import Evaluate, Export
from phi3space.jobs.kinds import PLAN, TRAIN, Kind
from phi3space.ui.chat_service import CHAT_CONCURRENCY, build_messages, resolve_for_visitor, stream_reply
from phi3space.ui.common import api_errors
from phi3space.ui.services import get_runner, signed_in


@api_errors
def submit_job(config_yaml: str, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None) -> str:
    """Queue a training run from a YAML run config (the format of `python -m phi3space train`); returns the job id.
    output.dir is chosen by the server."""
    return _queue(config_yaml, profile, oauth_token, TRAIN)


@api_errors
def plan_job(config_yaml: str, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None) -> str:
    """Queue a plan of a training run (the YAML of /submit_job): a few steps of it on this machine, then whether it
    fits, how long it takes and what it costs here and on each Jobs flavor. Returns the job id; its /job_status
    carries ``plan`` when done."""
    return _queue(config_yaml, profile, oauth_token, PLAN)


def _queue(config_yaml: str, profile, oauth_token, kind: Kind) -> str:
    visitor = signed_in(profile, oauth_token)
    owner = visitor.require_owner()
    runner = get_runner()
    cfg = job_spec.loads(config_yaml, defaults=runner.pipeline.defaults())
    return runner.submit(cfg, owner, visitor.token, visitor.expires_at, kind=kind).id


@api_errors
def job_status(job_id: str, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None) -> str:
    """JSON: status (queued|running|completed|failed|cancelled), step, max_steps, loss, eval_loss, eta_s,
    adapter (run folder, or the Hub repo when pushed), repo_url, metrics, error, queue_position, push_pending,
    plan (a plan job's, when done)."""
    owner = signed_in(profile, oauth_token).require_owner()
    runner = get_runner()
    return json.dumps(runner.state(runner.get(job_id, owner)))


@api_errors
def cancel_job(job_id: str, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None) -> str:
    """Stop a job (a running one saves its adapter and ends as cancelled); returns its status as JSON."""
    owner = signed_in(profile, oauth_token).require_owner()
    runner = get_runner()
    return json.dumps(runner.state(runner.cancel(job_id, owner)))


@api_errors
def resume_job(job_id: str, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None) -> str:
    """Queue a failed or stopped job again, continuing from its newest checkpoint; returns its status as JSON."""
    visitor = signed_in(profile, oauth_token)
    runner = get_runner()
    return json.dumps(runner.state(runner.resume(job_id, visitor.require_owner(), visitor.token, visitor.expires_at)))


@api_errors
def list_jobs(profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None) -> str:
    """JSON list of your jobs, oldest first, each as /job_status answers it (on a Space, also the runs brought
    back from your Hub repos after a restart)."""
    owner = signed_in(profile, oauth_token).require_owner()
    runner = get_runner()
    return json.dumps([runner.state(job) for job in runner.list(owner)])


@api_errors
def push_again(job_id: str, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None) -> str:
    """Push a finished run whose push failed (status failed, push_pending true) with your current token; no
    retraining. Returns its status as JSON (completed once delivered)."""
    visitor = signed_in(profile, oauth_token)
    runner = get_runner()
    return json.dumps(runner.state(runner.push_again(job_id, visitor.require_owner(), visitor.token)))


@api_errors
def evaluate_job(job_id: str, data: str = "", rows: int = 50, backend: str = "", flavor: str = "",
                 profile: gr.OAuthProfile | None = None, oauth_token: gr.OAuthToken | None = None) -> str:
    """Queue an evaluation of a finished run's adapter against its base model (on its eval rows, or up to ``rows``
    rows of ``data``: a Hub dataset); returns the eval job's id. Its /job_status carries ``evaluation`` (both
    summaries) when done. ``backend``: a name in compute.backend's choices (empty: where the run trained); ``flavor``: the Jobs
    hardware (empty: the run's, else the smallest GPU flavor)."""
    visitor = signed_in(profile, oauth_token)
    return get_runner().submit(Evaluate(job_id, data=data or None, rows=int(rows), backend=backend or None,
                                        flavor=flavor or None), visitor.require_owner(), visitor.token,
                               expires_at=visitor.expires_at).id


@api_errors
def export_job(job_id: str, quant: str = "q8_0", push_to: str = "", private: bool = True, system: str = "",
               temperature: float | None = None, backend: str = "", flavor: str = "",
               profile: gr.OAuthProfile | None = None, oauth_token: gr.OAuthToken | None = None) -> str:
    """Queue a GGUF export (f16, bf16 or q8_0) of a finished run's adapter, with an Ollama Modelfile, pushed to
    ``push_to`` (empty: <you>/<run name>-GGUF); returns the export job's id. ``backend`` and ``flavor`` as for
    /evaluate_job."""
    visitor = signed_in(profile, oauth_token)
    return get_runner().submit(Export(job_id, quant, push_to or "auto", private=bool(private), system=system or None,
                                      temperature=temperature, backend=backend or None, flavor=flavor or None),
                               visitor.require_owner(), visitor.token, expires_at=visitor.expires_at).id


@api_errors
def chat(adapter: str, message: str, system: str = "", max_new_tokens: int = DEFAULTS.max_new_tokens,
         temperature: float = DEFAULTS.temperature, top_p: float = DEFAULTS.top_p,
         profile: gr.OAuthProfile | None = None, oauth_token: gr.OAuthToken | None = None) -> Iterator[str]:
    """Stream the reply of an adapter (a job id, run folder or Hub repo ID) to one message; greedy by default."""
    settings = GenerationSettings.checked(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    messages = build_messages([], message, system)
    visitor = signed_in(profile, oauth_token)
    space = on_space()
    adapter_dir = resolve_for_visitor(adapter, visitor, get_runner(), space)
    yield from stream_reply(adapter_dir, None, messages, visitor, space, settings)


def build() -> None:
    """Register the API endpoints (for gradio_client and scripts) on the Blocks being built."""
    gr.api(submit_job, api_name="submit_job")
    gr.api(plan_job, api_name="plan_job")
    gr.api(job_status, api_name="job_status")
    gr.api(cancel_job, api_name="cancel_job")
    gr.api(resume_job, api_name="resume_job")
    gr.api(list_jobs, api_name="list_jobs")
    gr.api(push_again, api_name="push_again")
    gr.api(evaluate_job, api_name="evaluate_job")
    gr.api(export_job, api_name="export_job")
    gr.api(chat, api_name="chat", **CHAT_CONCURRENCY)
