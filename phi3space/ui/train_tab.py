"""Train tab: dataset + Inspect, model, run name and every setting, the config preview with steps and warnings,
Start.

Only layout and wiring; the logic lives in forms.py, services.py and jobs.py. The form's components are a mapping
from setting key ('training.learning_rate') to component, laid out by the groups the settings declare; gradio hands a
handler their values in that mapping's order (forms.FIELDS), and ``_named`` turns them back into key -> value at once,
so the RunConfig is built from names. The browser keeps the form (gr.BrowserState): a reload, or the page opened
again, finds it as it was left.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from phi3space import config as config_mod
from phi3space.errors import Phi3SpaceError
from phi3space.hub.access import check_reachable
from phi3space.hub.auth import real_token
from phi3space.hub.space import on_space
from phi3space.jobs import spec as job_spec
from phi3space.jobs.kinds import PLAN, TRAIN, Kind
from phi3space.jobs.submit import inputs
from phi3space.refs import is_hub_id
from phi3space.run import RunDir
from phi3space.ui import compute_box, forms
from phi3space.ui.common import UI_ONLY, code_block, page_text, user_errors
from phi3space.ui.follow import Follower
from phi3space.ui.jobs_view import following
from phi3space.ui.services import check_inputs_allowed, get_runner, identify

START, SUBMITTING = "Start training", "Submitting…"
# The settings panels: form group -> (title, elem_id). The main, output and compute groups have rows of their own.
PANELS = {"data": ("Dataset settings", "data-settings"), "lora": ("LoRA settings", "lora-settings"),
          "training": ("Training settings", "training-settings"),
          "advanced": ("Logging, checkpoints and hardware", "advanced-settings")}


@dataclass
class TrainTab:
    """The Train tab's components that the rest of the page wires to."""

    fields: dict  # setting key -> its component, in forms.FIELDS order
    upload: gr.File
    run_name: gr.Textbox
    memory: gr.BrowserState  # the form as this browser last left it (restored on reload)
    start: gr.Button

    @property
    def restored(self) -> list:
        """What restore() fills, in its return order."""
        return [self.upload, self.run_name, *self.fields.values()]


def _named(values: tuple | list) -> dict[str, Any]:
    """The settings' values as gradio hands them to a handler (in forms.FIELDS order, the order of the components'
    mapping) by setting key."""
    return dict(zip(forms.FIELDS, values, strict=True))


def _listed(values: dict[str, Any]) -> list:
    """Values by setting key, in the order of the form's components (a handler's outputs)."""
    return [values[key] for key in forms.FIELDS]


def _component(spec: forms.FieldSpec, initial: dict):
    component = _make(spec, initial.get(spec.key, spec.default))
    component.elem_id = spec.key.replace(".", "-")  # stable hooks for the browser test
    return component


def _make(spec: forms.FieldSpec, initial):
    info, width, value = spec.help, 160, forms.shown(spec, initial)  # RunConfig's defaults (the CLI's), or the demo's
    if spec.key == "model.base":
        choices = forms.BASE_MODELS if value in forms.BASE_MODELS else [value, *forms.BASE_MODELS]  # (the demo's)
        return gr.Dropdown(choices, value=value, label="Base model", info=info, allow_custom_value=True,
                           scale=3, min_width=260)
    if spec.key == "model.method":
        return gr.Radio(list(spec.choices), value=value, label="Method", info=info, scale=2, min_width=200)
    if spec.key == "training.objective":
        return gr.Radio(list(spec.choices), value=value, label="Objective", info=info, scale=2, min_width=200)
    if spec.key == "data.dataset":
        return gr.Textbox(value=value, label="Dataset", info=info + " An uploaded file takes its place.",
                          placeholder="user/dataset, or upload a file")
    if spec.key == "data.columns":
        return gr.Textbox(value=value, label="Column mapping", info=info + " Empty: the names are recognised as they are.",
                          placeholder=spec.placeholder, min_width=300, scale=2)
    if spec.key == "output.push_to":
        return gr.Textbox(value=value, label="Destination repo", info=info + " Empty: keep the adapter here only.",
                          placeholder=spec.placeholder, scale=3, min_width=260)
    if spec.key == "output.private":
        return gr.Checkbox(value=value, label="Private repo", info=info, scale=1, elem_classes=["switch"])
    if spec.kind == "choice":
        return gr.Dropdown(list(spec.choices), value=value, label=spec.label, info=info, min_width=width)
    if spec.kind == "bool":
        return gr.Checkbox(value=value, label=spec.label, info=info, elem_classes=["switch"])
    if spec.kind in ("int", "float") and not forms.text_entry(spec):
        return gr.Number(value=value, label=spec.label, info=info, precision=0 if spec.kind == "int" else None,
                         step=spec.step, min_width=width)
    return gr.Textbox(value=value, label=spec.label, info=info, placeholder=spec.placeholder, min_width=width)


def _dataset_ref(upload, owner: str | None) -> str | None:
    if not upload:
        return None
    return str(forms.stash_upload(upload, get_runner().data.uploads(owner or "anonymous")))


def _config(profile, oauth_token, upload, values: dict[str, Any]):
    """The visitor and the validated RunConfig the form (``values`` by setting key) describes."""
    visitor = identify(profile, oauth_token)
    dataset = _dataset_ref(upload, visitor.owner)
    cfg = forms.config_from_form(values, dataset)
    check_inputs_allowed(inputs(cfg), visitor.owner)
    return visitor, cfg


def _checked(cfg, visitor):
    """What Inspect and Start both check before anything is queued: the Hub answers when the form names Hub repos
    (asked once: an unreachable Hub is said in seconds), and the data reads, cleans and tokenizes (Inspect's
    report, returned)."""
    if any(is_hub_id(ref) for ref in inputs(cfg).values()) or cfg.output.push_to:
        check_reachable()
    return forms.inspect_dataset(cfg, visitor.hub_token())


@user_errors
def inspect_click(profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None, upload, run_name, *values):
    """Inspect: the data read, cleaned and tokenized as training would, its report, lengths, one example and the
    plan."""
    visitor, cfg = _config(profile, oauth_token, upload, _named(values))
    found = _checked(cfg, visitor)
    if upload:  # the visitor's file by its own name, not the server's copy of it
        found.text = found.text.replace(cfg.data.dataset, f"{Path(upload).name} (uploaded)")
    plan = forms.plan(cfg, found, forms.gpu_memory_gb())
    return code_block(found.text), found.histogram(), found.segments, found, plan.markdown()


def remember(upload, run_name, values: dict[str, Any]) -> dict:
    """The form (``values`` by setting key) as this browser's stored page state (JSON): restored when the page is
    opened again."""
    return {"upload": upload if isinstance(upload, str) else None, "run_name": run_name or "", "values": dict(values)}


def preview(inspection, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None, upload, run_name, *values):
    """Config YAML, steps and warnings; an unfinished form shows its problems here instead of a pop-up. The form is
    remembered in the browser on the way."""
    settings = _named(values)
    memory = remember(upload, run_name, settings)
    try:
        _, cfg = _config(profile, oauth_token, upload, settings)
    except Phi3SpaceError as exc:
        return gr.skip(), f"**Settings to fix:**\n\n{code_block(exc.message)}", gr.skip(), memory
    cfg.output.dir = ""
    text = cfg.to_yaml()
    folder = Path(tempfile.gettempdir()) / "phi3space-configs" / hashlib.sha256(text.encode()).hexdigest()[:16]
    path = folder / RunDir.CONFIG  # the preview runs on every change: one file per distinct config
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return text, forms.plan(cfg, inspection, forms.gpu_memory_gb()).markdown(), str(path), memory


def restore(memory, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None,
            request: gr.Request = None):
    """Page load: the form as this browser left it (upload, run name, every setting); what no longer fits (a
    value of the wrong kind, an upload gradio no longer holds) stays as it is. With nothing stored, on a Space, the
    destination repo defaults to the visitor's namespace. Opened as ``?from=<repo>`` (a card's "Train again"): the
    form is that run's, for the visitor's own account."""
    upload = run_name = gr.skip()
    values = {key: gr.skip() for key in forms.FIELDS}
    card = (request.query_params.get("from") or "").strip() if request is not None else ""
    if card:
        return train_again(card, profile, oauth_token, values)
    if not isinstance(memory, dict) or not isinstance(memory.get("values"), dict):
        values["output.push_to"] = default_push_to(profile)
        return [upload, run_name, *_listed(values)]
    stored = memory.get("upload")
    if isinstance(stored, str) and Path(stored).is_file() and Path(stored).resolve().is_relative_to(
            Path(get_upload_folder()).resolve()):  # only a file gradio received (stored state comes from the browser)
        upload = stored
    if isinstance(memory.get("run_name"), str):
        run_name = memory["run_name"]
    values.update({key: value for key, value in memory["values"].items() if key in values and forms.fits(key, value)})
    return [upload, run_name, *_listed(values)]


def train_again(repo_id: str, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None,
                values: dict[str, Any]) -> list:
    """The form filled from ``repo_id``'s pushed run config, its adapter going to the visitor's own namespace (or
    auto); a card that cannot be read leaves the form as it is and says why."""
    token = real_token(getattr(oauth_token, "token", None))  # on a Space, never the owner's: none is no token
    mine = default_push_to(profile)
    try:
        values.update(forms.from_card(repo_id, token or (False if on_space() else None),
                                      mine if isinstance(mine, str) else "auto"))
    except Phi3SpaceError as exc:
        gr.Warning(page_text(f"Train again from {repo_id}: {exc.message}. {exc.hint}"))
        return [gr.skip(), gr.skip(), *_listed(values)]
    gr.Info(page_text(f"The form holds the run of {repo_id}; its adapter will go to your account. Press Start."))
    return [gr.skip(), f"{repo_id.split('/')[-1]} again", *_listed(values)]


@user_errors
def load_yaml(file):
    """An uploaded run config fills the form (every setting but output.dir, which the server chooses)."""
    if not file:
        return [gr.skip()] * len(forms.FIELDS)
    cfg = job_spec.load(file)
    return _listed(forms.form_values(cfg))


@user_errors
def start(profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None, follower: Follower, upload, run_name,
          *values):
    """Start: the form checked as Inspect checks it, then submitted; the page follows the new job."""
    return _submit(TRAIN, profile, oauth_token, follower, upload, run_name, values)


@user_errors
def plan_click(profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None, follower: Follower, upload,
               run_name, *values):
    """Plan: the form checked as Start checks it, then a plan job queued (a few steps of the run on this machine,
    then whether it fits, how long and at what price here and on each Jobs flavor); the page follows it."""
    return _submit(PLAN, profile, oauth_token, follower, upload, run_name, values)


def _submit(kind: Kind, profile, oauth_token, follower: Follower, upload, run_name, values):
    visitor, cfg = _config(profile, oauth_token, upload, _named(values))
    owner = visitor.require_owner()
    _checked(cfg, visitor)  # what Inspect refuses is refused here at once, rather than by the job a minute later
    runner = get_runner()
    name = forms.run_name(cfg, run_name, {j.name for j in runner.list(owner)})
    job = runner.submit(cfg, owner, visitor.token, visitor.expires_at, name=name, kind=kind)
    where = "starting now" if runner.queue_position(job.id) is None else f"number {runner.queue_position(job.id)} in the queue"
    gr.Info(page_text(f"Job {job.id} ({job.name}) submitted: {where}."))
    return following(job, follower), None


def default_push_to(profile: gr.OAuthProfile | None):
    """The destination repo a signed-in visitor on a Space starts with: her namespace (elsewhere: left as it is)."""
    if profile is None or not on_space():
        return gr.skip()
    return f"{profile.username}/{config_mod.short_name(config_mod.DEFAULT_BASE)}-lora"


def build(follower: gr.State, seen: gr.State, initial: dict | None = None) -> TrainTab:
    """The tab, its fields starting from ``initial`` (section.key -> value: the demo's settings) where given, else
    from RunConfig's defaults."""
    initial = initial or {}
    specs = {key: forms.field_spec(key) for key in forms.FIELDS}
    placed: dict = {}  # key -> component, as they are laid out
    memory = gr.BrowserState(None, storage_key="phi3space-form")

    def place(keys: list[str]) -> None:
        for key in keys:
            placed[key] = _component(specs[key], initial)

    with gr.Row(elem_id="dataset-row", equal_height=False):
        with gr.Column(scale=3, min_width=260):
            place(["data.dataset"])
        with gr.Column(scale=2, min_width=260):
            upload = gr.File(label="…or upload a data file",
                             file_types=[".jsonl", ".json", ".csv", ".parquet"], elem_id="data-upload")
        with gr.Column(scale=1, min_width=120):
            inspect_btn = gr.Button("Inspect", elem_id="inspect")
            plan_btn = gr.Button("Plan", elem_id="plan-button", size="sm")
    with gr.Accordion("Dataset inspection", open=False, elem_id="inspect-box") as inspect_box:
        report = gr.Markdown(elem_id="inspection-report")
        with gr.Row():
            histogram = gr.BarPlot(x="tokens", y="rows", label="Tokens per row", height=220, min_width=300)
            example = gr.HighlightedText(label="One example (highlighted: the tokens the model is trained on; for DPO, "
                                               "the chosen and the rejected answer)",
                                         color_map={"trained": "green", "chosen": "green", "rejected": "red"},
                                         combine_adjacent=True, elem_id="example",
                                         min_width=300)
    inspection = gr.State(None)
    with gr.Row(elem_id="model-row", equal_height=False):
        place([key for key in forms.GROUPS["main"] if key != "data.dataset"])
        run_name = gr.Textbox(label="Run name", info="Tells your runs apart. Empty: <base>-<dataset>-<method>; a name "
                              "used before gets a number.", scale=2, min_width=200, placeholder="automatic",
                              elem_id="run-name")
    for group, (title, elem_id) in PANELS.items():
        with gr.Accordion(title, open=False, elem_id=elem_id):
            with gr.Row(equal_height=False):
                place(forms.GROUPS[group])
    with gr.Row(elem_id="output-row", equal_height=False):
        place(forms.GROUPS["output"])
    placed.update(compute_box.build(specs, placed["output.push_checkpoints"]))  # this machine or Hugging Face Jobs
    fields = {key: placed[key] for key in forms.FIELDS}  # the order handlers receive their values in
    with gr.Accordion("Config file (YAML)", open=False, elem_id="config-accordion"):
        with gr.Row():
            yaml_upload = gr.File(label="Load a config file into the form", file_types=[".yaml", ".yml"],
                                  elem_id="config-upload", min_width=260)
            download = gr.DownloadButton(f"Download {RunDir.CONFIG}", min_width=200)
        yaml_preview = gr.Code(language="yaml", label="Config preview", interactive=False, elem_id="config-preview")
    plan_md = gr.Markdown("Steps: press **Inspect** to count the rows.", elem_id="plan")
    with gr.Row():
        start_btn = gr.Button(START, variant="primary", elem_id="start")
    form_inputs = [upload, run_name, *fields.values()]
    inspect_btn.click(lambda: gr.Accordion(open=True), None, inspect_box, api_visibility=UI_ONLY).then(
        inspect_click, form_inputs, [report, histogram, example, inspection, plan_md], api_visibility=UI_ONLY)
    gr.on([c.change for c in form_inputs] + [inspection.change], preview, [inspection, *form_inputs],
          [yaml_preview, plan_md, download, memory], show_progress="hidden", trigger_mode="always_last",
          api_visibility=UI_ONLY)
    yaml_upload.upload(load_yaml, yaml_upload, list(fields.values()), api_visibility=UI_ONLY)
    # Start is disabled while its submission is in flight (a second press cannot queue the same job twice), and
    # enabled again however the submission ended.
    start_btn.click(lambda: gr.Button(SUBMITTING, interactive=False), None, start_btn, queue=False,
                    api_visibility=UI_ONLY).then(
        start, [follower, *form_inputs], [follower, seen], api_visibility=UI_ONLY).then(
        lambda: gr.Button(START, interactive=True), None, start_btn, queue=False, api_visibility=UI_ONLY)
    plan_btn.click(plan_click, [follower, *form_inputs], [follower, seen], api_visibility=UI_ONLY)
    return TrainTab(fields, upload, run_name, memory, start_btn)
