"""``python -m phi3space train CONFIG``: train from a YAML run config, here, or on the backend its ``compute:``
section names (followed here to its end); inside a Hugging Face job, the run that job was given."""

from __future__ import annotations

import sys

from phi3space.cli.common import print_event, set_argument
from phi3space.engine.progress import is_main_process
from phi3space.engine.training import train
from phi3space.hub.auth import resolve_token
from phi3space.jobs import spec
from phi3space.jobs.hf import protocol as job_protocol
from phi3space.jobs.spec import JobConfig
from phi3space.run import EventWriter


def make_parser(subparsers) -> None:
    """Add ``train`` to ``subparsers``."""
    p = subparsers.add_parser("train", help="train from a YAML run config")
    p.add_argument("config", help="YAML run config (see configs/); compute.backend: hf-jobs trains on Hugging Face Jobs")
    set_argument(p)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of output.dir")
    p.add_argument("--push-anyway", action="store_true",
                   help="push the adapter even when it got worse at general skills (output.push_if_worse)")
    p.set_defaults(func=main)


def main(args) -> int:
    """Train ``args.config``; 0 when the run completed (its last line: ``done: RUN_DIR``)."""
    inside = job_protocol.inside_job(args.config)  # in a Hugging Face job: the config came in an environment value
    cfg = job_protocol.job_config(args.config, args.set or []) if inside else spec.load(args.config, args.set or [])
    cfg.output.push_if_worse = cfg.output.push_if_worse or args.push_anyway
    echo = job_protocol.job_echo(print_event) if inside else print_event
    if inside:
        _never_hold(cfg, echo)
    else:
        done = spec.backend_class(cfg.compute.backend).train_from_terminal(cfg, args.resume, resolve_token(), print_event)
        if done is not None:  # it ran elsewhere (Hugging Face Jobs): followed here to its end
            print(done)
            return 0
    try:
        run_dir = train(cfg, resume=args.resume, token=resolve_token(), echo=echo)
    finally:
        dist = sys.modules.get("torch.distributed")  # (a run refused before it loaded torch has none to end)
        if dist is not None and dist.is_available() and dist.is_initialized():  # under accelerate launch / torchrun
            dist.destroy_process_group()
    print(f"done: {run_dir}")
    return 0


def _never_hold(cfg: JobConfig, echo) -> None:
    """Inside a Hugging Face job a push is never held: the job's disk is gone when it ends, and a held adapter with
    it. So output.push_if_worse is on there, and the run's log says so."""
    if cfg.output.general_check and not cfg.output.push_if_worse:
        cfg.output.push_if_worse = True
        EventWriter(None, enabled=is_main_process(), echo=echo).emit(
            "log", message="in a Hugging Face job the push is never held (the job's disk is gone when it ends): "
                           "output.push_if_worse is on; the general-skills check still reports what the adapter lost")
