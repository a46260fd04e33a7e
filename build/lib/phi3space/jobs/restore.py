"""Bringing a visitor's runs back from the Hub after a restart wiped the disk (``JobRunner.restore_from_hub``).

A record on a repo's card is the visitor's own input: anyone can write any job id into a card of a repo of their
own. So a restored record is trusted only for the repo it was read from (its config's ``output.push_to`` is that
repo, whatever the copy says) and for the visitor that repo's namespace belongs to, and a job id already taken by
someone else's run never hides this visitor's: the run comes back under an id of its own, derived from the
visitor, the repo and the recorded id (the same after every restart), so both visitors keep seeing their own runs.
"""

from __future__ import annotations

import hashlib
import sys
import time

from phi3space import config
from phi3space.config import default_run_name
from phi3space.datadir import new_job_id, safe_name
from phi3space.errors import ConfigError
from phi3space.jobs.store import Job


def restore_from_hub(runner, owner: str, token: str) -> list[str]:
    """Bring back ``owner``'s runs that this Space recorded on the Hub and that the local store lacks; returns their
    job ids. An interrupted one is failed and can be resumed.

    Raises:
        HubError / AuthError: the Hub could not be asked.
    """
    from phi3space.hub.records import hub_runs, rebuild

    restored = []
    for hub_run in hub_runs(owner, token):
        job_id = _free_id(runner, owner, hub_run.repo_id, safe_name(hub_run.job_id))
        if job_id is None:
            continue  # restored already (an earlier visit of this process, or another thread)
        run = runner.data.run(owner, job_id)
        try:
            rebuild(run, hub_run, token)
        except ConfigError as exc:  # one repo whose config was spoiled does not hide the others
            print(f"phi3space: not restoring {hub_run.repo_id}: {exc.message}", file=sys.stderr)
            continue
        created = float(hub_run.record.get("created") or time.time())
        with runner._lock:
            if runner.store.get(job_id) is None:
                runner.store.add(Job(id=job_id, owner=owner, name=default_run_name(config.load(run.config)),
                                     run_dir=str(run.path), phase="done", created=created, finished=time.time()))
                restored.append(job_id)
    return restored


def _free_id(runner, owner: str, repo_id: str, job_id: str) -> str | None:
    """The id ``owner``'s run recorded on ``repo_id`` comes back under: the recorded one while nobody else holds it,
    else one derived from the three (the same every time); None when ``owner`` holds it already (listed)."""
    for attempt in range(8):
        if attempt:
            seed = f"{owner}\n{repo_id}\n{job_id}\n{attempt}"
            job_id = hashlib.sha256(seed.encode()).hexdigest()[:12]
        held = runner.store.get(job_id)
        if held is None:
            return job_id
        if held.owner == owner:
            return None
    return new_job_id()  # eight clashes in a row: someone wrote the derived ids too
