"""An experiment tracker (``logging.report_to``) on a Hugging Face job.

A job's container is gone when it ends, so its tracker must log somewhere that outlives it, and its settings travel
with the job: plain ones in its environment, keys as its secrets (names only on the platform's page), never in its
command line. What cannot work there is refused before the job is submitted (and billed).

- trackio logs to a trackio Space: ``TRACKIO_SPACE_ID`` (or a self-hosted ``TRACKIO_SERVER_URL``) from this
  terminal's environment, else ``<user>/phi3space-trackio``, which trackio creates with the job's own token, as
  private as the run (engine/sft.py). ``TRACKIO_BUCKET_ID`` and ``TRACKIO_DATASET_ID`` go along;
  ``TRACKIO_SERVER_URL`` (it may carry a write token) and ``TRACKIO_WRITE_TOKEN`` as secrets.
- wandb needs its package in the job's image and ``WANDB_API_KEY`` (a secret), with ``WANDB_PROJECT``,
  ``WANDB_ENTITY``, ``WANDB_BASE_URL``, ``WANDB_RUN_GROUP``, ``WANDB_TAGS`` and ``WANDB_MODE`` along.

On a Space the environment is its owner's: none of it is given to a visitor's job (a visitor's trackio run logs to
their own Space; wandb, which needs a key of theirs, is refused).
"""

from __future__ import annotations

import os

from phi3space.config import RunConfig
from phi3space.errors import ConfigError, register_secret
from phi3space.hub.space import on_space
from phi3space.jobs.hf.code import image_has

DEFAULT_TRACKIO_SPACE = "phi3space-trackio"  # <user>/phi3space-trackio when no trackio Space is named
CARRIED = {  # tracker -> (plain settings, secret settings) taken from this terminal's environment
    "trackio": (("TRACKIO_SPACE_ID", "TRACKIO_BUCKET_ID", "TRACKIO_DATASET_ID"),
                ("TRACKIO_SERVER_URL", "TRACKIO_WRITE_TOKEN")),
    "wandb": (("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_BASE_URL", "WANDB_RUN_GROUP", "WANDB_TAGS", "WANDB_MODE"),
              ("WANDB_API_KEY",)),
}


def check_tracker(cfg: RunConfig) -> None:
    """Refuse a tracker that cannot work on a Hugging Face job, before the job is submitted.

    Raises:
        ConfigError: its package is not in the job's image, or (wandb) no key can be given to the job.
    """
    name = cfg.logging.report_to
    if name == "none":
        return
    if not image_has(name):
        raise ConfigError([f"logging.report_to: {name} is not installed in the image a Hugging Face job runs"],
                          "Use logging.report_to: trackio (installed with phi3space; it logs to a Space of yours) or "
                          "none; or name an image that has it with PHI3SPACE_JOBS_IMAGE.")
    if name == "wandb" and (on_space() or not os.environ.get("WANDB_API_KEY")):
        where = ("a visitor's job on this Space cannot be given a Weights & Biases key" if on_space()
                 else "WANDB_API_KEY is not set here, so the job could not log in to Weights & Biases")
        raise ConfigError([f"logging.report_to: wandb: {where}"],
                          "Use logging.report_to: trackio (it logs to a Space of yours), or none"
                          + ("." if on_space() else "; or export WANDB_API_KEY=<your key> and submit again."))


def tracker_settings(cfg: RunConfig, namespace: str) -> tuple[dict, dict]:
    """(environment, secrets) the job's tracker needs, for the user ``namespace``; both empty without a tracker."""
    name = cfg.logging.report_to
    if name == "none":
        return {}, {}
    plain, secret = CARRIED[name]
    here = {} if on_space() else os.environ  # a Space's environment is its owner's, not the visitor's
    env = {k: here[k] for k in plain if here.get(k)}
    secrets = {k: here[k] for k in secret if here.get(k)}
    for value in secrets.values():
        register_secret(value)
    if name == "trackio" and "TRACKIO_SPACE_ID" not in env and "TRACKIO_SERVER_URL" not in secrets:
        env["TRACKIO_SPACE_ID"] = f"{namespace}/{DEFAULT_TRACKIO_SPACE}"
    return env, secrets


def where_it_logs(cfg: RunConfig, env: dict, secrets: dict) -> str | None:
    """A line for the run's log saying where its tracker's dashboard is (no secret in it)."""
    name = cfg.logging.report_to
    if name == "trackio":
        return (f"trackio logs this run to the Space {env['TRACKIO_SPACE_ID']}" if "TRACKIO_SPACE_ID" in env
                else "trackio logs this run to TRACKIO_SERVER_URL")
    if name == "wandb":
        return f"wandb logs this run to the project {env.get('WANDB_PROJECT') or 'phi3space'}"
    return None
