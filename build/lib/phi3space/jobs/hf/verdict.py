"""How a Hugging Face job ended, as its run's last word where its own events lack it: from the platform's stage, the
exit code its command reported (``@phi3space-exit N``, see protocol.py) and its running time against its time
limit; the service's own status message is shown as it is, never interpreted."""

from __future__ import annotations

from phi3space.errors import scrub
from phi3space.jobs.backend import Verdict
from phi3space.jobs.spec import JobConfig, timeout_seconds
from phi3space.run import RunState

OOM_EXIT = 137  # 128 + SIGKILL: what the kernel's out-of-memory killer leaves


def last_word(info, state: RunState, cfg: JobConfig | None = None, exit_code: int | None = None,
              trains: bool = True, timeout: str | None = None) -> Verdict | None:
    """How the job ended once the platform says so (``info``), its events say ``state`` and its command reported
    ``exit_code``: None when the events already tell the truth. A training run is completed only when the job
    completed and the adapter was pushed (an eval or export job: when its own events say so). ``timeout``: the time
    limit of an eval or export job (a training job's is ``cfg.compute.timeout``)."""
    stage, said = str(info.status.stage), scrub(info.status.message or "")
    adapter = state.adapter_repo if state.status != "failed" else None
    if stage == "COMPLETED":
        if state.status in ("cancelled", "failed") or (state.status == "completed" and (state.adapter_repo or not trains)):
            return None
        what = "completed without pushing an adapter" if state.status == "completed" else "ended without finishing its run"
        return Verdict("failed", "jobs", f"the Hugging Face job {what}", f"See its logs: {info.url}", adapter)
    if stage == "CANCELED":
        return None if state.final else Verdict("cancelled", adapter=adapter)
    if state.status == "failed":
        return None  # the trainer said why itself
    kind, how, hint = _diagnose(info, exit_code, state, cfg if trains else None, timeout)
    return Verdict("failed", kind, f"the Hugging Face job {how}" + (f" ({said})" if said else ""), hint, adapter)


def _diagnose(info, exit_code: int | None, state: RunState, cfg: JobConfig | None,
              timeout: str | None = None) -> tuple[str, str, str]:
    """(kind, what happened, hint) from the stage, the exit code and the running time; never from message texts.
    ``cfg``: a training run's config (None for an eval or export job, whose time limit is ``timeout``)."""
    if cfg is None:
        again = "Run it again."
    else:
        again = (f"Resume continues from the last checkpoint it pushed ({state.checkpoint_url})." if state.checkpoint_url
                 else "It pushed no checkpoint: submit it again.")
    if str(info.status.stage) == "DELETED":
        return "jobs", "was deleted", again
    limit = cfg.compute.timeout if cfg is not None else timeout
    seconds = timeout_seconds(limit) if limit else None
    ran = getattr(getattr(info, "durations", None), "running_secs", None)
    if seconds and ran and ran >= 0.98 * seconds:
        hint = (f"Raise compute.timeout. {again}" if cfg is not None else
                "Run it again on a faster flavor (--flavor, or the flavor box), or for an eval on fewer rows.")
        return "timeout", f"reached its time limit ({limit}) and was stopped", hint
    if exit_code == OOM_EXIT:
        what = ("lower training.batch_size or training.max_length (or use model.method: qlora)" if cfg is not None
                else "run it on one with a larger GPU")
        return "oom", "was killed (exit code 137, SIGKILL: most often for running out of memory)", \
            f"Pick a flavor with more memory, or {what}. {again}"
    code = f" with exit code {exit_code}" if exit_code is not None else ""
    return "jobs", f"failed{code}", f"See its logs: {info.url}. {again}"
