"""What comes after a run, as jobs of their own (JobRunner's submit_eval and submit_export): measure its adapter
against the base model, and export it to GGUF for Ollama and llama.cpp. Each is a kind (phi3space.jobs.kinds) whose
whole command line is ``python -m phi3space eval|export ...`` with ``--run-dir`` set to the job's own folder; it
queues, runs, stops and is followed like training, with the visitor's token only in its environment.
"""

from __future__ import annotations

import json

from phi3space.datadir import new_job_id, safe_name
from phi3space.errors import ConfigError
from phi3space.jobs.kinds import EVAL, EXPORT, TRAIN, Kind, kind_of
from phi3space.jobs.store import Job
from phi3space.jobs.submit import Caller, check_inputs_allowed, check_token_lasts

MAX_EVAL_ROWS = 1000


class FollowUps:
    """JobRunner's jobs on a finished run's adapter (besides merge); it supplies get, status, pipeline, data, space
    and _queue."""

    def _adapter_of(self, job_id: str, owner: str, what: str) -> tuple[Job, str]:
        """The finished training run ``job_id`` of ``owner`` and its adapter (its folder here, else its Hub repo).

        Raises:
            ConfigError: not the owner's, not a training run, or no adapter.
        """
        source = self.get(job_id, owner)
        status, state = self.status(source)
        if not state.has_adapter or kind_of(source) is not TRAIN:
            raise ConfigError([f"job {job_id} has no adapter to {what} (status: {status})"],
                              f"{what.capitalize()} a finished run (or one stopped after it saved its adapter).")
        return source, source.run_dir if source.run.has_adapter() else state.adapter_repo

    def _queue_followup(self, kind: Kind, owner: str, token: str | None, argv: list[str], name: str,
                        out: bool = False) -> Job:
        """Queue ``kind`` with ``argv``, its events (and with ``out``, its files) in a new folder of its own."""
        job_id = new_job_id()
        run = self.data.run(owner, job_id)
        run.path.mkdir(parents=True, exist_ok=True)
        argv = [kind.name, *argv, "--run-dir", str(run.path)] + (["--out", str(run.path)] if out else [])
        return self._queue(Job(id=job_id, owner=owner, name=name, run_dir=str(run.path), needs_token=bool(token),
                               kind=kind.name, args=json.dumps(argv)), token)

    def submit_eval(self, job_id: str, owner: str, token: str | None = None, data: str | None = None, rows: int = 50,
                    expires_at: float | None = None) -> Job:
        """Queue ``python -m phi3space eval`` on a finished run's adapter: its eval rows, or up to ``rows`` rows of
        ``data``; the results go into the job's events and, when the adapter is on the Hub, its card.

        Raises:
            ConfigError: not a finished run of the owner's, rows out of range, or (on a Space) data on the server's disk.
            AuthError: no sign-in on a Space, or one that has expired.
        """
        source, adapter = self._adapter_of(job_id, owner, "evaluate")
        if not isinstance(rows, int) or not 1 <= rows <= MAX_EVAL_ROWS:
            raise ConfigError([f"rows: {rows!r} (1 to {MAX_EVAL_ROWS})"], "e.g. 50 rows.")
        caller = Caller(owner, token, expires_at)
        self.pipeline.require_sign_in(caller, "evaluating here needs you to sign in with Hugging Face")
        check_token_lasts(None, expires_at)
        data = (data or "").strip() or None
        if data:
            check_inputs_allowed({"data": data}, (self.data.uploads(owner),), self.space)
        argv = [adapter, "--rows", str(rows)] + (["--data", data] if data else [])
        return self._queue_followup(EVAL, owner, token, argv, f"{source.name}-eval")

    def submit_export(self, job_id: str, owner: str, quant: str, push_to: str | None, token: str | None = None,
                      private: bool = True, system: str | None = None, temperature: float | None = None,
                      expires_at: float | None = None) -> Job:
        """Queue ``python -m phi3space export`` on a finished run's adapter: GGUF in ``quant`` and a Modelfile in the
        job's folder, pushed to ``push_to`` (a repo, or 'auto' for <you>/<run name>-GGUF).

        Raises:
            ConfigError: not a finished run of the owner's, an unknown quant. AuthError: no sign-in where needed.
        """
        from phi3space.engine.gguf_file import QUANTS

        source, adapter = self._adapter_of(job_id, owner, "export")
        if quant not in QUANTS:
            raise ConfigError([f"quant: {quant!r} is not one of {', '.join(QUANTS)}"],
                              "k-quants (Q4_K_M, ...) need llama.cpp's llama-quantize, run on an f16 export.")
        caller = Caller(owner, token, expires_at)
        if push_to or self.space:
            self.pipeline.require_sign_in(caller, "pushing to the Hub needs you to sign in")
        check_token_lasts(None, expires_at)
        name = safe_name(source.name)
        if push_to or self.space:  # resolved ('auto') and proven writable now, not after the merge
            from phi3space.hub.access import check_push_access
            from phi3space.hub.auth import acting_token

            push_to = check_push_access(push_to or "auto", acting_token(token, self.space), f"{name}-GGUF", private)
        argv = [adapter, "--quant", quant, "--name", name] + (["--push-to", push_to] if push_to else [])
        argv += ([] if private else ["--public"]) + (["--system", system] if system else [])
        argv += ["--temperature", f"{temperature:g}"] if temperature is not None else []
        return self._queue_followup(EXPORT, owner, token, argv, f"{source.name}-gguf", out=True)
