"""After a run, on the Train tab under "Your runs": Evaluate (the adapter against its base, on the run's eval rows or
a dataset) and Export to GGUF (for Ollama and llama.cpp), each queued as a job and followed like training; an eval
job's summary and its side-by-side table (prompt, reference, base, adapter), a page of rows at a time.

The buttons and the results follow the followed job with a timer of their own, so jobs_view is not changed.
"""

from __future__ import annotations

import gradio as gr

from phi3space.engine.gguf_file import QUANTS
from phi3space.errors import AuthError, ConfigError
from phi3space.generation import GenerationSettings
from phi3space.hub.auth import real_token
from phi3space.jobs.followups import Evaluate, Export, output_files
from phi3space.jobs.kinds import EVAL, kind_of
from phi3space.jobs.spec import backend_class
from phi3space.refs import check_repo_id
from phi3space.ui import compute_box
from phi3space.ui.common import UI_ONLY, hub_destination, user_errors
from phi3space.ui.follow import Follower
from phi3space.ui.jobs_view import acted_on_id, following
from phi3space.ui.services import acted_on, get_runner, identify, run_status

PAGE_ROWS = 10
SHOWN_CHARS = 240  # of a reply in the table (the whole reply is in the job's events)
TABLE = ["#", "prompt", "reference", "base", "adapter", "EM base / adapter"]
SUMMARY = [("exact match", "exact_match"), ("token F1", "token_f1"), ("ROUGE-L", "rouge_l"),
           ("loss on assistant tokens", "loss"), (r"replies ending with <\|end\|>", "ended_with_end")]
K_QUANTS = ("Q4_K_M and the other k-quants need llama.cpp's C++ quantizer: export f16 here, then run "
            "`llama-quantize NAME-F16.gguf NAME-Q4_K_M.gguf Q4_K_M` on your machine.")


def summary_md(evaluation: dict | None) -> str:
    """An evaluation's scores as a markdown table, base beside adapter; empty without one."""
    if not evaluation:
        return ""
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    rows = "".join(f"| {name} | {fmt(evaluation['base'].get(k))} | {fmt(evaluation['adapter'].get(k))} |\n"
                   for name, k in SUMMARY)
    return (f"**{evaluation['rows']} rows of `{evaluation['dataset']}`**, greedy replies\n\n"
            f"| | base | adapter |\n|---|---|---|\n{rows}")


def table_page(examples: list[dict], page: int) -> tuple[list[list], str, int]:
    """One page of the side-by-side table, its caption, and the page shown (clamped to the pages there are)."""
    pages = max(1, -(-len(examples) // PAGE_ROWS))
    page = min(max(1, int(page or 1)), pages)
    shown = examples[(page - 1) * PAGE_ROWS: page * PAGE_ROWS]
    cut = lambda text: text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + " …"  # noqa: E731
    rows = [[e["index"], cut(e["prompt"]), cut(e["reference"]), cut(e["base"]["reply"]), cut(e["adapter"]["reply"]),
             f"{e['base']['exact_match']:.0f} / {e['adapter']['exact_match']:.0f}"] for e in shown]
    return rows, f"page {page} of {pages} ({len(examples)} rows)", page


def refresh(follower: Follower, seen: tuple | None, page: int, profile: gr.OAuthProfile | None,
            oauth_token: gr.OAuthToken | None):
    """A timer tick: the buttons follow the run the actions act on (the followed run, or the run the followed eval,
    export or merge job read), an eval job's results appear when they are there, and a finished export's or local
    merge's files are offered for download."""
    owner = identify(profile, oauth_token).owner
    runner = get_runner()
    job = None
    if owner and follower.job_id:
        try:
            job = runner.get(follower.job_id, owner)
        except ConfigError:  # not among the visitor's jobs (any more): nothing to offer
            job = None
    status, state = run_status(job) if job is not None else (None, None)
    _, run_state = acted_on(job, runner.list(owner)) if job is not None else (None, None)
    done = run_state is not None and run_state.has_adapter
    results = job is not None and kind_of(job) is EVAL and bool(state.examples)
    files = [str(p) for p in output_files(job, state)] if job is not None else []
    signature = (follower.job_id, status, done, len(state.examples) if state else 0, page, tuple(files))
    if signature == seen:
        return (seen,) + (gr.skip(),) * 8
    rows, caption, page = table_page(state.examples if results else [], page)
    return (signature, page, gr.Button(interactive=done), gr.Button(interactive=done),
            gr.update(value=summary_md(state.evaluation if results else None), visible=results),
            gr.update(value=rows, visible=results), caption, gr.Row(visible=results),
            gr.File(value=files or None, visible=bool(files)))


def turn(page: int, step: int) -> int:
    """The page of examples after turning ``step`` pages from ``page`` (never below 1)."""
    return max(1, int(page or 1) + step)


RUN_ON = [("Where the run trained", ""), *compute_box.backend_choices()]


def run_on(box: str) -> tuple[gr.Radio, gr.Dropdown]:
    """A box's "Run on" choice and, for Hugging Face Jobs, its hardware (as the Train form's compute box offers)."""
    with gr.Row(equal_height=True):
        backend = gr.Radio(RUN_ON, value="", label="Run on", scale=3, elem_id=f"{box}-backend",
                           info="On Hugging Face Jobs the adapter must be pushed and the data a Hub dataset.")
        flavor = gr.Dropdown(compute_box.flavor_choices(fetch=False), value=None, allow_custom_value=True, scale=2,
                             label="Jobs hardware", info="empty: the run's, else the smallest GPU", visible=False,
                             elem_id=f"{box}-flavor")
    backend.input(on_run_on, [backend], [flavor], api_visibility=UI_ONLY)
    return backend, flavor


def on_run_on(backend: str, oauth_token: gr.OAuthToken | None):
    """A backend with hardware to choose shows its flavors (with prices, asked with the visitor's token)."""
    if not backend or "flavor" not in backend_class(backend).options:
        return gr.Dropdown(visible=False)
    return gr.Dropdown(choices=compute_box.flavor_choices(real_token(getattr(oauth_token, "token", None))), visible=True)


@user_errors
def evaluate(follower: Follower, data: str, rows, backend: str, flavor: str, profile: gr.OAuthProfile | None,
             oauth_token: gr.OAuthToken | None):
    """Queue "evaluate the followed run's adapter against its base" as a job, and follow it."""
    visitor = identify(profile, oauth_token)
    run = acted_on_id(follower, visitor.require_owner())
    job = get_runner().submit(Evaluate(run.id, data=data, rows=int(rows or 0), backend=backend or None,
                                       flavor=flavor or None), visitor.require_owner(), visitor.token,
                              expires_at=visitor.expires_at)
    gr.Info(f"Evaluation job {job.id} submitted.")
    return following(job, follower), None


@user_errors
def export(follower: Follower, quant: str, push: bool, repo: str, private: bool, system: str, temperature: str,
           backend: str, flavor: str, profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None):
    """Queue "export the run's adapter to GGUF" as a job, and follow it: the files are written here (offered for
    download when done) and with ``push`` (always on a Space or on Jobs) pushed to ``repo`` (empty: you/<run>-GGUF)."""
    visitor = identify(profile, oauth_token)
    repo = (repo or "").strip()
    if repo and push:
        repo = check_repo_id(repo, "destination repo", hint="Type the repo the GGUF goes to, e.g. your-name/my-model-GGUF, "
                                                           "or leave it empty for you/<run name>-GGUF.")
    runner = get_runner()
    run = acted_on_id(follower, visitor.require_owner())
    if push and not runner.space and not visitor.hub_token():
        raise AuthError("pushing the GGUF needs a Hugging Face token",
                        "Untick 'Push to the Hub' to write it here and download it from this page; or set HF_TOKEN (or "
                        "run `hf auth login`) and restart the app.")
    job = runner.submit(Export(run.id, quant, (repo or "auto") if push else None, private=bool(private),
                               system=(system or "").strip() or None,
                               temperature=GenerationSettings.checked(temperature=temperature).temperature
                               if (temperature or "").strip() else None, backend=backend or None, flavor=flavor or None),
                        visitor.require_owner(), visitor.token, expires_at=visitor.expires_at)
    gr.Info(f"Export job {job.id} submitted.")
    return following(job, follower), None


def build(timer: gr.Timer, follower: gr.State, seen: gr.State) -> None:
    """Lay out what comes after training, for the followed job: evaluate against the base (its scores and
    examples), export to GGUF, and its files to download; wired to ``timer``."""
    drawn = gr.State(None)
    space = get_runner().space
    files = gr.File(label="Files of the followed job, to download", file_count="multiple", interactive=False,
                    visible=False, elem_id="job-files")
    with gr.Accordion("Evaluate against the base model", open=False, elem_id="eval-box"):
        gr.Markdown("Greedy replies from the base model and from it with the run's adapter, on the run's eval rows "
                    "(or a dataset you name), scored against the reference answers: exact match, token F1, ROUGE-L, the "
                    "loss on the answers, and how many replies end with `<|end|>`. When the adapter is on the Hub, its "
                    "card gets the scores. It runs as a job, like training, with an ETA once it started. How long: two "
                    "replies a row (base and adapter), each up to a few hundred tokens; on a CPU a few seconds a row "
                    "for the demo's tiny model, and minutes a row for Phi-3-mini (use a GPU, or fewer rows).")
        with gr.Row(equal_height=True):
            data = gr.Textbox(label="Rows to evaluate on", placeholder="empty: the run's eval rows; or a dataset",
                              scale=3, elem_id="eval-data", min_width=200)
            rows = gr.Number(value=50, label="At most this many rows", precision=0, scale=1, elem_id="eval-rows",
                             min_width=120)
            eval_btn = gr.Button("Evaluate", variant="primary", interactive=False, scale=1, elem_id="evaluate",
                                 min_width=120)
        eval_backend, eval_flavor = run_on("eval")
    with gr.Accordion("Export to GGUF (Ollama, llama.cpp)", open=False, elem_id="export-box"):
        gr.Markdown("Merges the run's adapter into its 16-bit base and writes one GGUF file (with Phi-3's chat "
                    "template, stopping at `<|end|>`) and an Ollama `Modelfile`, offered for download here when done; "
                    "with 'Push to the Hub' (always on a Space or on Jobs) also pushed to a Hub repo of yours with a card "
                    f"that shows `ollama run hf.co/...`. {K_QUANTS}")
        with gr.Row(equal_height=True):
            quant = gr.Dropdown(list(QUANTS), value="q8_0", label="Type", scale=1, elem_id="export-quant",
                                min_width=140)
            push, repo, private = hub_destination("export", space, "empty: you/<run name>-GGUF")
        with gr.Row(equal_height=True):
            system = gr.Textbox(label="System prompt (Modelfile)", placeholder="optional", scale=3,
                                elem_id="export-system", min_width=200)
            temperature = gr.Textbox(label="Temperature (Modelfile)", placeholder="empty: Ollama's default",
                                     scale=1, elem_id="export-temperature", min_width=120)
            export_btn = gr.Button("Export", variant="primary", interactive=False, scale=1,
                                   elem_id="export", min_width=140)
        export_backend, export_flavor = run_on("export")
    page = gr.State(1)
    summary = gr.Markdown(visible=False, elem_id="eval-summary")
    table = gr.Dataframe(headers=TABLE, label="Base and adapter, side by side", interactive=False, wrap=True,
                         visible=False, elem_id="eval-table",
                         column_widths=["50px", "220px", "180px", "220px", "220px", "100px"])
    with gr.Row(elem_id="eval-pages", visible=False) as pager:
        back = gr.Button("◀ Previous", size="sm", min_width=100, elem_id="eval-previous")
        caption = gr.Markdown(elem_id="eval-page")
        ahead = gr.Button("Next ▶", size="sm", min_width=100, elem_id="eval-next")
    outputs = [drawn, page, eval_btn, export_btn, summary, table, caption, pager, files]
    timer.tick(refresh, [follower, drawn, page], outputs, show_progress="hidden", queue=False, api_visibility=UI_ONLY)
    eval_btn.click(evaluate, [follower, data, rows, eval_backend, eval_flavor], [follower, seen], api_visibility=UI_ONLY)
    export_btn.click(export, [follower, quant, push, repo, private, system, temperature, export_backend, export_flavor],
                     [follower, seen], api_visibility=UI_ONLY)
    for button, step in ((back, -1), (ahead, 1)):
        button.click(lambda p, s=step: turn(p, s), page, page, api_visibility=UI_ONLY).then(
            refresh, [follower, drawn, page], outputs, api_visibility=UI_ONLY)
