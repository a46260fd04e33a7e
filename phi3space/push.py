"""Put adapters and checkpoints on the Hub (huggingface_hub's create_repo / upload_folder, with retries).

The final adapter goes to the repo's main branch with our own model card; checkpoints go to a separate
``checkpoints`` branch so they never overwrite it, and ``fetch_checkpoint`` brings the newest one back for --resume.
"""

from __future__ import annotations

from pathlib import Path

from . import config as config_mod
from .card import write_run_artifacts
from .errors import HubError, Phi3SpaceError
from .events import EventWriter
from .hub import base_license, check_push_access, short_error, with_retries

CHECKPOINT_BRANCH = "checkpoints"
ADAPTER_PATTERNS = ["adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "chat_template.jinja", "config.yaml", "README.md", "loss_curve.png"]


def _hub_call(fn, what: str, writer: EventWriter | None):
    """Run one Hub operation with retries; a final failure becomes a HubError (authorisation errors stay theirs)."""
    from huggingface_hub.errors import HfHubHTTPError

    log = (lambda msg: writer.emit("log", message=msg)) if writer else None
    try:
        return with_retries(fn, what, on_retry=log)
    except Phi3SpaceError:
        raise
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        if status in (401, 403):
            raise HubError(f"{what}: the Hub refused it ({short_error(exc)})",
                           "Check that your token has write access to that namespace.") from None
        raise HubError(f"{what} failed: {short_error(exc)}", "") from None
    except Exception as exc:
        raise HubError(f"{what} failed: {short_error(exc)}", "") from None


def push_run(run_dir: str | Path, repo_id: str | None = None, token: str | None = None, private: bool | None = None,
             writer: EventWriter | None = None) -> dict:
    """Push a run folder's adapter, tokenizer, config, loss curve and model card; returns {repo_id, url, commit}.

    Raises:
        AuthError: no/refused token or a namespace that is not the user's.
        HubError: the push failed after retries (the run folder is untouched; run this again later).
    """
    from huggingface_hub import HfApi

    run_dir = Path(run_dir)
    if not (run_dir / "adapter_model.safetensors").exists() or not (run_dir / "config.yaml").exists():
        raise HubError(f"{run_dir} holds no finished adapter (adapter_model.safetensors + config.yaml)",
                       "Pass the run folder of a finished run, e.g. runs/NAME.")
    cfg = config_mod.load(run_dir / "config.yaml")
    target = repo_id or cfg.output.push_to or "auto"
    private = cfg.output.private if private is None else private
    api = HfApi(token=token)
    try:
        repo_id = check_push_access(target, token, config_mod.default_run_name(cfg))
        url = _hub_call(lambda: api.create_repo(repo_id, private=private, exist_ok=True), "create repo", writer)
        write_run_artifacts(cfg, run_dir, license=base_license(cfg.model.base, token), repo_id=repo_id)
        info = _hub_call(lambda: api.upload_folder(folder_path=str(run_dir), repo_id=repo_id, allow_patterns=ADAPTER_PATTERNS,
                                                   commit_message=f"phi3space: {cfg.model.method} adapter"), "upload", writer)
    except HubError as exc:
        raise HubError(f"push to {target} failed: {exc.message}; the adapter is kept in {run_dir}",
                       f"Push it later with: python -m phi3space push {run_dir}"
                       + (f" --to {repo_id}" if repo_id != (cfg.output.push_to or "auto") else "")) from None
    result = {"repo_id": repo_id, "url": str(url).rstrip("/") if url else f"https://huggingface.co/{repo_id}",
              "commit": getattr(info, "oid", None) or ""}
    if writer:
        writer.emit("push", what="adapter", **result)
    return result


def push_checkpoint(checkpoint: Path, repo_id: str, token: str | None, private: bool, writer: EventWriter | None = None,
                    keep: int | None = None) -> dict:
    """Upload one checkpoint folder to the repo's checkpoints branch (as ``checkpoint-N/``); with ``keep``, older
    checkpoints beyond the newest ``keep`` are deleted from the branch in the same commit."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    _hub_call(lambda: api.create_repo(repo_id, private=private, exist_ok=True), "create repo", writer)
    _hub_call(lambda: api.create_branch(repo_id, branch=CHECKPOINT_BRANCH, exist_ok=True), "create branch", writer)
    info = _hub_call(lambda: api.upload_folder(folder_path=str(checkpoint), repo_id=repo_id, revision=CHECKPOINT_BRANCH,
                                               path_in_repo=checkpoint.name, commit_message=f"phi3space: {checkpoint.name}"),
                     f"upload {checkpoint.name}", writer)
    if keep:  # after the upload, so that the branch always holds a checkpoint to resume from
        from huggingface_hub import CommitOperationDelete

        files = _hub_call(lambda: api.list_repo_files(repo_id, revision=CHECKPOINT_BRANCH), "list checkpoints", writer)
        older = sorted(s for s in _checkpoint_steps(files) if s < _step(checkpoint.name))
        stale = [CommitOperationDelete(f"checkpoint-{s}/", is_folder=True) for s in older[: max(0, len(older) - (keep - 1))]]
        if stale:
            _hub_call(lambda: api.create_commit(repo_id, stale, revision=CHECKPOINT_BRANCH,
                                                commit_message=f"phi3space: keep the newest {keep} checkpoints"),
                      "remove old checkpoints", writer)
    result = {"repo_id": repo_id, "url": f"{str(getattr(info, 'repo_url', '') or repo_id).rstrip('/')}/tree/{CHECKPOINT_BRANCH}",
              "commit": getattr(info, "oid", None) or "", "what": checkpoint.name}
    if writer:
        writer.emit("push", **result)
    return result


def fetch_checkpoint(repo_id: str, run_dir: Path, token: str | None) -> Path | None:
    """Download the newest checkpoint from the repo's checkpoints branch into ``run_dir``; None when there is none."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        files = with_retries(lambda: HfApi(token=token).list_repo_files(repo_id, revision=CHECKPOINT_BRANCH), "list checkpoints")
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return None
    steps = _checkpoint_steps(files)
    if not steps:
        return None
    name = f"checkpoint-{max(steps)}"
    with_retries(lambda: snapshot_download(repo_id, revision=CHECKPOINT_BRANCH, allow_patterns=[f"{name}/*"],
                                           local_dir=str(run_dir), token=token), f"download {name}")
    return run_dir / name


def _step(name: str) -> int:
    return int(name.split("-")[-1])


def _checkpoint_steps(files: list[str]) -> set[int]:
    """Steps of the checkpoint-N/ folders among a branch's file paths."""
    return {_step(f.split("/")[0]) for f in files
            if f.startswith("checkpoint-") and "/" in f and f.split("/")[0].split("-")[-1].isdigit()}
