"""An evaluation's numbers on the adapter's model card: the adapter's scores as ``model-index`` results (the Hub's
evaluation-results format, through huggingface_hub's ``EvalResult``), and a table of base against adapter in the
card's text. The card is read from the repo, changed, and uploaded in one commit; nothing else in the repo moves.
"""

from __future__ import annotations

import re
from pathlib import Path

from phi3space.errors import AuthError, HubError
from phi3space.refs import is_hub_id
from phi3space.run import EventWriter, RunDir

METRICS = {"exact_match": "exact match", "token_f1": "token F1", "rouge_l": "ROUGE-L",
           "ended_with_end": "replies ending with <|end|>", "loss": "loss on assistant tokens"}
SECTION = "## Evaluation against the base model"


def card_repo(adapter_dir: Path, ref: str) -> str | None:
    """The Hub repo whose card holds the adapter's results: the repo it was named by, else the one its run pushed
    it to (None: not on the Hub)."""
    if is_hub_id(ref):
        return ref
    return RunDir(adapter_dir).state().adapter_repo


def eval_results(result: dict) -> list:
    """The adapter's scores as huggingface_hub EvalResults (one per metric)."""
    from huggingface_hub import EvalResult

    dataset = str(result["dataset"])
    return [EvalResult(task_type="text-generation", task_name="Text generation", dataset_type=dataset,
                       dataset_name=dataset.split("/")[-1], metric_type=key, metric_name=name,
                       metric_value=round(float(result["adapter"][key]), 4))
            for key, name in METRICS.items() if result["adapter"].get(key) is not None]


GENERAL_DATASET = "phi3space/general-skills"  # the model-index dataset of the general-skills check
GENERAL_SECTION = "## General skills: did it get worse?"


def general_results(general: dict) -> list:
    """The general-skills check as model-index results: the adapter's share right (and its base's, for comparison)."""
    from huggingface_hub import EvalResult

    return [EvalResult(task_type="text-generation", task_name="Text generation", dataset_type=GENERAL_DATASET,
                       dataset_name="phi3space general skills", metric_type=f"{side}_accuracy",
                       metric_name=f"{side} accuracy on {general['questions']} general questions",
                       metric_value=round(float(general[side]), 4))
            for side in ("adapter", "base")]


def general_section(general: dict) -> str:
    """The card's general-skills section: both scores, the verdict, and each question the two answered differently."""
    cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")[:80]  # noqa: E731
    mark = lambda side: "right" if side["right"] else "wrong"  # noqa: E731
    differ = [e for e in general["examples"] if e["base"]["right"] != e["adapter"]["right"]]
    rows = "".join(f"| {cell(e['question'])} | {cell(e['answer'])} | {cell(e['base']['reply'])} ({mark(e['base'])}) | "
                   f"{cell(e['adapter']['reply'])} ({mark(e['adapter'])}) |\n" for e in differ)
    n = general["questions"]
    text = (f"{GENERAL_SECTION}\n\nBefore the push, base and adapter answered the same {n} short general questions "
            f"(arithmetic, geography, science, language, reasoning, code), greedily: the base got "
            f"{round(general['base'] * n)}/{n} right, the adapter {round(general['adapter'] * n)}/{n}.")
    if general["worse"]:
        text += f" **The adapter lost more than the margin of {general['margin']:.0%}.**"
    if not differ:
        return text + " They got the same questions right.\n"
    return (text + " The questions they answered differently:\n\n| question | answer | base | adapter |\n"
            "|---|---|---|---|\n" + rows)


def _table(result: dict) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    cell = lambda name: name.replace("|", "\\|")  # noqa: E731  (a | in <|end|> would end a table cell)
    rows = "".join(f"| {cell(name)} | {fmt(result['base'].get(k))} | {fmt(result['adapter'].get(k))} |\n"
                   for k, name in METRICS.items())
    return (f"{SECTION}\n\n{result['rows']} rows of `{result['dataset']}`, greedy replies from {result['base_model']} "
            f"and from it with this adapter (`python -m phi3space eval`).\n\n| metric | base | adapter |\n|---|---|---|\n"
            f"{rows}")


def with_eval_results(card_text: str, result: dict, model_name: str) -> str:
    """``card_text`` with the adapter's model-index results and the base-vs-adapter table (replacing earlier ones)."""
    from huggingface_hub import ModelCard

    card = ModelCard(card_text)
    card.data.model_name = model_name
    kept = [r for r in card.data.eval_results or [] if r.dataset_type == GENERAL_DATASET]  # the training's own check
    card.data.eval_results = kept + eval_results(result)
    text = re.sub(rf"\n{re.escape(SECTION)}\n.*?(?=\n## |\Z)", "", card.text, flags=re.S).rstrip()
    card.text = f"{text}\n\n{_table(result)}"
    return str(card)


def put_eval_results(repo_id: str, result: dict, token: str | None, writer: EventWriter) -> dict | None:
    """Update ``repo_id``'s card with ``result`` and record it as a push event (what: card). A repo the token may
    not write to keeps its card: the results stay in the events, and a log line says why."""
    from huggingface_hub import HfApi, hf_hub_download

    from phi3space.hub.errors import call

    log = lambda msg: writer.emit("log", message=msg)  # noqa: E731
    try:
        path = call(lambda: hf_hub_download(repo_id, RunDir.CARD, token=token), "download card", ref=repo_id, on_retry=log)
        text = with_eval_results(Path(path).read_text(encoding="utf-8"), result, repo_id.split("/")[-1])
        api = HfApi(token=token)
        info = call(lambda: api.upload_file(path_or_fileobj=text.encode("utf-8"), path_in_repo=RunDir.CARD, repo_id=repo_id,
                                            commit_message="phi3space: evaluation results"), "upload card", ref=repo_id,
                    on_retry=log)
    except (AuthError, HubError) as exc:
        log(f"the card of {repo_id} keeps its old results: {exc.message}")
        return None
    pushed = {"repo_id": repo_id, "url": f"https://huggingface.co/{repo_id}", "commit": getattr(info, "oid", None) or ""}
    writer.emit("push", what="card", **pushed)
    return pushed
