"""Train tab: dataset + Inspect, model and LoRA settings, the config preview with steps and warnings, Start.

Only layout and wiring; the logic lives in forms.py, services.py and jobs.py. The form's components are kept in a
list aligned with forms.FIELDS, so a handler receives their values in that order.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from .. import config as config_mod
from ..errors import Phi3SpaceError
from ..hub import on_space
from ..run import RunDir
from . import compute_box, forms
from .common import UI_ONLY, user_errors
from .follow import Follower
from .services import check_inputs_allowed, get_runner, identify


@dataclass
class TrainTab:
    fields: list  # components, in forms.FIELDS order
    upload: gr.File
    push_to: gr.Textbox
    start: gr.Button


def _component(spec: forms.FieldSpec):
    component = _make(spec)
    component.elem_id = spec.key.replace(".", "-")  # stable hooks for the browser test
    return component


def _make(spec: forms.FieldSpec):
    info = spec.help
    if spec.key == "model.base":
        return gr.Dropdown(forms.BASE_MODELS, value=spec.default, label="Base model", info=info, allow_custom_value=True)
    if spec.key == "model.method":
        return gr.Radio(list(spec.choices), value=spec.default, label="Method", info=info)
    if spec.key == "data.dataset":
        return gr.Textbox(label="Dataset", info=info, placeholder="user/dataset, or upload a file →")
    if spec.key == "output.push_to":
        return gr.Textbox(label="Destination repo", info=info + " Empty: keep the adapter here only.", placeholder="you/my-adapter")
    if spec.key == "output.private":
        return gr.Checkbox(value=spec.default, label="Private repo", info=info)
    if spec.kind == "choice":
        return gr.Dropdown(list(spec.choices), value=spec.default, label=spec.label, info=info)
    if spec.kind == "bool":
        return gr.Checkbox(value=spec.default, label=spec.label, info=info)
    if spec.kind in ("int", "float"):
        return gr.Number(value=spec.default, label=spec.label, info=info, precision=0 if spec.kind == "int" else None)
    return gr.Textbox(value=spec.default, label=spec.label, info=info)


def _dataset_ref(upload, owner: str | None) -> str | None:
    if not upload:
        return None
    return str(forms.stash_upload(upload, owner or "anonymous", get_runner().root))


def _config(profile, oauth_token, upload, values):
    visitor = identify(profile, oauth_token)
    dataset = _dataset_ref(upload, visitor.owner)
    cfg = forms.config_from_form(values, dataset)
    allowed = (get_runner().root / "uploads",)
    check_inputs_allowed({"data.dataset": cfg.data.dataset, "model.base": cfg.model.base}, allowed)
    return visitor, cfg


@user_errors
def inspect_click(profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None, upload, *values):
    visitor, cfg = _config(profile, oauth_token, upload, values)
    found = forms.inspect_dataset(cfg, visitor.hub_token())
    plan = forms.plan(cfg, found, forms.gpu_memory_gb())
    return f"```\n{found.text}\n```", found.histogram(), found.segments, found, plan.markdown()


def preview(inspection, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None, upload, *values):
    """Config YAML, steps and warnings; an unfinished form shows its problems here instead of a pop-up."""
    try:
        _, cfg = _config(profile, oauth_token, upload, values)
    except Phi3SpaceError as exc:
        return gr.skip(), f"**Settings to fix:**\n\n```\n{exc.message}\n```", gr.skip()
    cfg.output.dir = ""
    text = cfg.to_yaml()
    folder = Path(tempfile.gettempdir()) / "phi3space-configs" / hashlib.sha256(text.encode()).hexdigest()[:16]
    path = folder / RunDir.CONFIG  # the preview runs on every change: one file per distinct config
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return text, forms.plan(cfg, inspection, forms.gpu_memory_gb()).markdown(), str(path)


@user_errors
def load_yaml(file):
    """An uploaded run config fills the form."""
    if not file:
        return [gr.skip()] * len(forms.FIELDS)
    cfg = config_mod.load(file)
    return forms.form_values(cfg)


@user_errors
def start(profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None, follower: Follower, upload, *values):
    visitor, cfg = _config(profile, oauth_token, upload, values)
    owner = visitor.require_owner()
    runner = get_runner()
    job = runner.submit(cfg, owner, visitor.token)
    follower = Follower()
    follower.follow(job)
    where = "starting now" if runner.queue_position(job.id) is None else f"number {runner.queue_position(job.id)} in the queue"
    gr.Info(f"Job {job.id} submitted: {where}.")
    return follower


def default_push_to(profile: gr.OAuthProfile | None, current: str):
    if current or profile is None or not on_space():
        return gr.skip()
    return f"{profile.username}/{config_mod.short_name(config_mod.DEFAULT_BASE)}-lora"


def build(follower: gr.State) -> TrainTab:
    specs = {key: forms.field_spec(key) for key in forms.FIELDS}
    fields: dict = {}  # key -> component, only while laying out; handlers get the list in FIELDS order
    with gr.Row():
        with gr.Column(scale=3):
            fields["data.dataset"] = _component(specs["data.dataset"])
        with gr.Column(scale=2):
            upload = gr.File(label="…or upload a data file", file_types=[".jsonl", ".json", ".csv", ".parquet"], height=90)
        inspect_btn = gr.Button("Inspect", scale=1, elem_id="inspect")
    with gr.Accordion("Dataset inspection", open=False) as inspect_box:
        report = gr.Markdown()
        with gr.Row():
            histogram = gr.BarPlot(x="tokens", y="rows", label="Tokens per row", height=220)
            example = gr.HighlightedText(label="One example (highlighted: the tokens the model is trained on)",
                                         color_map={"trained": "green"}, combine_adjacent=True, elem_id="example")
    inspection = gr.State(None)
    with gr.Row():
        fields["model.base"] = _component(specs["model.base"])
        fields["model.method"] = _component(specs["model.method"])
    with gr.Accordion("LoRA settings", open=False):
        with gr.Row():
            for key in forms.LORA_FIELDS:
                fields[key] = _component(specs[key])
    with gr.Accordion("Training settings", open=False):
        with gr.Row(equal_height=False):
            for key in forms.TRAINING_FIELDS:
                fields[key] = _component(specs[key])
    with gr.Row():
        for key in forms.OUTPUT_FIELDS:
            fields[key] = _component(specs[key])
    fields.update(compute_box.build(specs, fields["output.push_checkpoints"]))  # this machine or Hugging Face Jobs
    with gr.Accordion("Config file (YAML)", open=False, elem_id="config-accordion"):
        with gr.Row():
            yaml_upload = gr.File(label="Load a config file into the form", file_types=[".yaml", ".yml"], height=90,
                                  elem_id="config-upload")
            download = gr.DownloadButton(f"Download {RunDir.CONFIG}")
        yaml_preview = gr.Code(language="yaml", label="Config preview", interactive=False, elem_id="config-preview")
    plan_md = gr.Markdown("Steps: press **Inspect** to count the rows.", elem_id="plan")
    with gr.Row():
        start_btn = gr.Button("Start training", variant="primary", elem_id="start")
    components = [fields[key] for key in forms.FIELDS]

    form_inputs = [upload, *components]
    inspect_btn.click(lambda: gr.Accordion(open=True), None, inspect_box, api_visibility=UI_ONLY).then(
        inspect_click, form_inputs, [report, histogram, example, inspection, plan_md], api_visibility=UI_ONLY)
    gr.on([c.change for c in components] + [upload.change, inspection.change], preview, [inspection, *form_inputs],
          [yaml_preview, plan_md, download], show_progress="hidden", trigger_mode="always_last", api_visibility=UI_ONLY)
    yaml_upload.upload(load_yaml, yaml_upload, components, api_visibility=UI_ONLY)
    start_btn.click(start, [follower, *form_inputs], follower, api_visibility=UI_ONLY)
    return TrainTab(components, upload, fields["output.push_to"], start_btn)
