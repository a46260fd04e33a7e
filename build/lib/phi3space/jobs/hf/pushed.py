"""What a Hugging Face training job pushed: the record of its end when its log cannot be read.

A training job pushes its adapter itself (hub/push.upload_adapter: one commit titled ``ADAPTER_COMMIT`` on the
destination repo's main branch, with the run's resolved config). When the platform says the job completed but its
log stream never became readable, that commit is the proof that the run completed: one made after the job was
created whose ``config.yaml`` names this run (its ``output.dir`` is the run's id, see platform.start). Everything is
asked through huggingface_hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import PurePosixPath

from phi3space.hub.errors import hub_error, with_retries
from phi3space.jobs.hf.protocol import CONFIG_VAR
from phi3space.run import RunDir

CLOCK_SLACK = timedelta(minutes=2)  # the Hub's and the Jobs service's clocks, compared


@dataclass(frozen=True)
class Pushed:
    """The adapter commit a job's run pushed."""

    repo_id: str
    url: str
    commit: str


def run_of(info) -> tuple[str, str] | None:
    """(destination repo, run id) of a training job, from the run config it carries in its environment; None for
    a job that carries none (an eval or export job)."""
    import yaml

    try:
        sent = yaml.safe_load((info.environment or {}).get(CONFIG_VAR) or "") or {}
        output = sent.get("output") or {}
        repo, run_dir = output.get("push_to"), output.get("dir")
    except (yaml.YAMLError, AttributeError):
        return None
    if not isinstance(repo, str) or not isinstance(run_dir, str) or "/" not in repo:
        return None
    return repo, PurePosixPath(run_dir).name


def pushed_adapter(info, token: str | None) -> Pushed | None:
    """The adapter the job ``info`` (inspect_job's answer) pushed for its run, or None when its repo holds none.

    Raises:
        AuthError: the token was refused. HubError: the Hub could not be asked (ask again later).
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    from phi3space.hub.push import ADAPTER_COMMIT

    found = run_of(info)
    if found is None:
        return None
    repo, run_id = found
    api = HfApi(token=token)
    try:
        commits = with_retries(lambda: api.list_repo_commits(repo), f"list the commits of {repo}")
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return None  # nothing pushed there at all
    except Exception as exc:
        raise _mapped(exc, f"list the commits of {repo}", repo) from None
    since = info.created_at - CLOCK_SLACK if info.created_at else None
    for commit in commits:  # newest first
        if since is not None and commit.created_at < since:
            break
        if commit.title.strip() == ADAPTER_COMMIT and _names_run(api, repo, commit.commit_id, run_id):
            return Pushed(repo, f"{constants.ENDPOINT}/{repo}", commit.commit_id)
    return None


def _mapped(exc: Exception, what: str, repo: str) -> Exception:
    mapped = hub_error(exc, what, repo)
    return exc if mapped is None else mapped


def _names_run(api, repo: str, commit: str, run_id: str) -> bool:
    """Whether the config pushed in ``commit`` is the one of run ``run_id``."""
    import yaml
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = with_retries(lambda: api.hf_hub_download(repo, RunDir.CONFIG, revision=commit),
                            f"download the config of {repo}")
    except EntryNotFoundError:
        return False
    except Exception as exc:
        raise _mapped(exc, f"download the config of {repo}", repo) from None
    try:
        with open(path, encoding="utf-8") as fh:
            pushed = yaml.safe_load(fh) or {}
        return PurePosixPath(str((pushed.get("output") or {}).get("dir") or "")).name == run_id
    except (OSError, yaml.YAMLError, AttributeError):
        return False
