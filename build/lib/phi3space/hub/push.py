"""Put adapters and checkpoints on the Hub (huggingface_hub's create_repo / upload_folder, with retries).

The final adapter goes to the repo's main branch with our own model card; checkpoints go to a separate
``checkpoints`` branch so they never overwrite it, each with the run's events so far (what a Space that restarted
rebuilds the run from, see phi3space.records), and ``fetch_checkpoint`` brings the newest one back for --resume.
"""

from __future__ import annotations

from pathlib import Path

from phi3space.errors import HubError
from phi3space.hub.access import base_license, check_push_access
from phi3space.hub.errors import call, with_retries
from phi3space.run import EventWriter, RunDir, checkpoint_name, checkpoint_step

CHECKPOINT_BRANCH = "checkpoints"
ADAPTER_COMMIT = "phi3space: adapter"  # the title of the commit that pushes a run's adapter (what a follower looks for)


def _retry_log(writer: EventWriter | None):
    return (lambda msg: writer.emit("log", message=msg)) if writer else None


def upload_adapter(run: RunDir, repo_id: str, token: str | None, private: bool, writer: EventWriter) -> dict:
    """Upload the run folder's adapter, tokenizer, config, loss curve and model card (as already rendered) to
    ``repo_id``, and record it as a ``push`` event; returns {repo_id, url, commit}.

    Raises:
        HubError / AuthError: the push failed after retries (the run folder is untouched).
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    log = _retry_log(writer)
    url = call(lambda: api.create_repo(repo_id, private=private, exist_ok=True), "create repo", ref=repo_id, on_retry=log)
    info = call(lambda: api.upload_folder(folder_path=str(run.path), repo_id=repo_id, allow_patterns=RunDir.PUSHED,
                                          commit_message=ADAPTER_COMMIT), "upload", ref=repo_id, on_retry=log)
    result = {"repo_id": repo_id, "url": str(url).rstrip("/") if url else f"https://huggingface.co/{repo_id}",
              "commit": getattr(info, "oid", None) or ""}
    writer.emit("push", what="adapter", **result)
    return result


def push_run(run_dir: str | Path, repo_id: str | None = None, token: str | None = None,
             private: bool | None = None, record: dict | None = None) -> dict:
    """Push a finished run folder later (``python -m phi3space push``, or the web app's "Push again"): checks
    access, renders the card for that repo from the run's events (with a web app job's ``record``), uploads, and
    records the push in the run's events.

    Raises:
        AuthError: no/refused token or a namespace that is not the user's.
        HubError: the push failed after retries (the run folder is untouched; run this again later).
    """
    from phi3space import config as config_mod
    from phi3space.hub.card import write_card

    run = RunDir(run_dir)
    if not run.has_adapter() or not run.config.exists():
        raise HubError(f"{run_dir} holds no finished adapter",
                       "Pass the run folder of a finished run, e.g. runs/NAME.")
    cfg = config_mod.load(run.config)
    target = repo_id or cfg.output.push_to or "auto"
    private = cfg.output.private if private is None else private
    try:
        resolved = check_push_access(target, token, config_mod.auto_repo_name(cfg), private)
        write_card(cfg, run, license=base_license(cfg.model.base, token), repo_id=resolved, record=record)
        return upload_adapter(run, resolved, token, private, run.writer())
    except HubError as exc:
        raise HubError(f"push to {target} failed: {exc.message}; the adapter is kept in {run_dir}",
                       f"Push it later with: python -m phi3space push {run_dir}"
                       + (f" --to {target}" if target != (cfg.output.push_to or "auto") else "")) from None


def push_checkpoint(checkpoint: Path, repo_id: str, token: str | None, private: bool, writer: EventWriter | None = None,
                    keep: int | None = None) -> dict:
    """Upload one checkpoint folder to the repo's checkpoints branch (as ``checkpoint-N/``), with the run's events so
    far, in one commit; with ``keep``, older checkpoints beyond the newest ``keep`` are deleted in that commit."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi(token=token)
    log = _retry_log(writer)
    call(lambda: api.create_repo(repo_id, private=private, exist_ok=True), "create repo", ref=repo_id, on_retry=log)
    call(lambda: api.create_branch(repo_id, branch=CHECKPOINT_BRANCH, exist_ok=True), "create branch", ref=repo_id,
         on_retry=log)
    ops: list = [CommitOperationAdd(f"{checkpoint.name}/{f.relative_to(checkpoint).as_posix()}", str(f))
                 for f in sorted(checkpoint.rglob("*")) if f.is_file()]
    events = RunDir(checkpoint.parent).events
    if events.exists():  # a snapshot of whole lines: the trainer goes on appending
        data = events.read_bytes()
        ops.append(CommitOperationAdd(RunDir.EVENTS, data[: data.rfind(b"\n") + 1]))
    if keep:  # in the same commit, so that the branch always holds a checkpoint to resume from
        files = call(lambda: api.list_repo_files(repo_id, revision=CHECKPOINT_BRANCH), "list checkpoints", ref=repo_id,
                     on_retry=log)
        older = sorted(s for s in _checkpoint_steps(files) if s < checkpoint_step(checkpoint.name))
        ops += [CommitOperationDelete(f"{checkpoint_name(s)}/", is_folder=True) for s in older[: max(0, len(older) - (keep - 1))]]
    info = call(lambda: api.create_commit(repo_id, ops, revision=CHECKPOINT_BRANCH, commit_message=f"phi3space: {checkpoint.name}"),
                f"upload {checkpoint.name}", ref=repo_id, on_retry=log)
    result = {"repo_id": repo_id, "url": f"{str(getattr(info, 'repo_url', '') or repo_id).rstrip('/')}/tree/{CHECKPOINT_BRANCH}",
              "commit": getattr(info, "oid", None) or "", "what": checkpoint.name}
    if writer:
        writer.emit("push", **result)
    return result


def fetch_checkpoint(repo_id: str, run: RunDir, token: str | None) -> Path | None:
    """Download the newest checkpoint from the repo's checkpoints branch into the run folder; None when there is none."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        files = with_retries(lambda: HfApi(token=token).list_repo_files(repo_id, revision=CHECKPOINT_BRANCH), "list checkpoints")
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return None
    steps = _checkpoint_steps(files)
    if not steps:
        return None
    name = checkpoint_name(max(steps))
    call(lambda: snapshot_download(repo_id, revision=CHECKPOINT_BRANCH, allow_patterns=[f"{name}/*"],
                                   local_dir=str(run.path), token=token), f"download {name}", ref=repo_id)
    return run.checkpoint(max(steps))


def hub_checkpoint_steps(repo_id: str, token: str | None) -> list[int]:
    """Steps of the checkpoints on the repo's checkpoints branch, oldest first (none when there is no branch).

    Raises:
        HubError / AuthError: the Hub refused or could not be reached.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    def listing() -> list[str]:
        try:
            return HfApi(token=token or False).list_repo_files(repo_id, revision=CHECKPOINT_BRANCH)
        except (RepositoryNotFoundError, RevisionNotFoundError):
            return []

    return sorted(_checkpoint_steps(call(listing, "list checkpoints", ref=repo_id)))


def _checkpoint_steps(files: list[str]) -> set[int]:
    """Steps of the checkpoint-N/ folders among a branch's file paths."""
    return {s for f in files if "/" in f and (s := checkpoint_step(f)) is not None}
