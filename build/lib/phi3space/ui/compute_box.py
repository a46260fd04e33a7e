"""The Train form's hardware group: where the run trains (this machine, or Hugging Face Jobs on the visitor's
account), the Jobs flavor with its price per hour, and the time limit. The estimated cost shows in the plan under
the form (forms.plan). Layout and wiring only: flavors and prices come from phi3space.flavors."""

from __future__ import annotations

import gradio as gr

from phi3space.hub.auth import real_token
from phi3space.jobs.hf import flavors
from phi3space.jobs.spec import backend_class, backend_classes
from phi3space.ui.common import UI_ONLY


def flavor_choices(token: str | None = None, fetch: bool = True) -> list[tuple[str, str]]:
    """(label with GPUs and price per hour, flavor name) for the GPU flavors; without ``fetch``, names only (the page
    is built without asking the Hub; choosing Hugging Face Jobs asks, with the visitor's token)."""
    if not fetch:
        from huggingface_hub import JobHardware

        return [(h.value, h.value) for h in JobHardware if flavors.gpus_in_name(h.value)]
    return [(f.label(), f.name) for f in flavors.hardware(token) if f.gpus]


def on_backend(backend: str, flavor: str, oauth_token: gr.OAuthToken | None):
    """Choosing Hugging Face Jobs: the flavors with today's prices, and checkpoints pushed (the job's disk is gone
    when it ends; Resume continues from the Hub)."""
    chosen = backend_class(backend)
    if "flavor" not in chosen.options:
        return gr.skip(), gr.skip()
    return (gr.Dropdown(choices=flavor_choices(real_token(getattr(oauth_token, "token", None))), value=flavor),
            True if chosen.needs_hub_destination else gr.skip())


def backend_label(cls, queued: bool = False) -> str:
    """A backend as the page names it: its label, whether it waits in the app's queue, whether it is billed."""
    return cls.label + (" (queued)" if queued and cls.uses_slots else "") + (" (billed to you)" if cls.billed else "")


def backend_choices(queued: bool = False) -> list[tuple[str, str]]:
    """(label, name) of every backend, from their own descriptions."""
    return [(backend_label(cls, queued), name) for name, cls in backend_classes().items()]


def build(specs: dict, push_checkpoints: gr.Checkbox) -> dict:
    """The compute.* components, keyed by setting name."""
    from phi3space.ui.services import get_runner

    backend_spec, flavor_spec, timeout_spec, gpus_spec = (specs[f"compute.{k}"] for k in ("backend", "flavor", "timeout", "gpus"))
    with gr.Accordion("Hardware: this machine or Hugging Face Jobs", open=False, elem_id="compute"):
        with gr.Row():
            backend = gr.Radio(backend_choices(queued=True), value=backend_spec.default, label="Where to train", info=backend_spec.help,
                               elem_id="compute-backend")
            flavor = gr.Dropdown(flavor_choices(fetch=False), value=flavor_spec.default, allow_custom_value=True,
                                 label="Jobs hardware (price per hour)", info=flavor_spec.help, elem_id="compute-flavor")
            timeout = gr.Textbox(value=timeout_spec.default, label="Time limit", info=timeout_spec.help,
                                 elem_id="compute-timeout")
            gpus = gr.Textbox(value=gpus_spec.default, label="GPUs on this machine", info=gpus_spec.help,
                              visible=get_runner().slots > 1, elem_id="compute-gpus")  # a multi-GPU server
    backend.input(on_backend, [backend, flavor], [flavor, push_checkpoints], api_visibility=UI_ONLY)
    return {"compute.backend": backend, "compute.flavor": flavor, "compute.timeout": timeout, "compute.gpus": gpus}
