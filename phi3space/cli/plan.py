"""``python -m phi3space plan CONFIG``: before a run, a measured plan (phi3space.jobs.plan): a few steps of the real
training here, then its peak memory against what there is, its speed, whether it fits (and if not, the settings that
would make it fit), and for here and each Hugging Face Jobs flavor the time and the price, each with its error.

The stages go to stderr as they happen; the plan to stdout, as lines to read or (``--json``) one JSON object. With
``--run-dir`` (the page's Plan, a job of kind ``plan``) the stages and the plan are that folder's events too."""

from __future__ import annotations

import json
import sys

from phi3space.cli.common import run_dir_argument, set_argument, stoppable, writer
from phi3space.engine.modeling import quiet_libraries
from phi3space.hub.auth import resolve_token
from phi3space.jobs import spec
from phi3space.jobs.plan import plan_run
from phi3space.report import plan_lines


def make_parser(subparsers) -> None:
    """Add ``plan`` to ``subparsers``."""
    p = subparsers.add_parser("plan", help="measure a run before it starts: memory, speed, fits, time and price where")
    p.add_argument("config", help="YAML run config (as train takes it)")
    set_argument(p)
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    run_dir_argument(p)
    p.set_defaults(func=main)


def main(args) -> int:
    """Plan ``args.config`` as ``train`` would load it, and print the plan."""
    cfg = spec.load(args.config, args.set or [])
    stoppable("plan")
    quiet_libraries()
    events = writer(args) if args.run_dir else None  # a plan job's folder (the page's Plan): its events
    plan = plan_run(cfg, resolve_token(), events,
                    progress=lambda text: print(f"plan: {text}", file=sys.stderr, flush=True))
    print(json.dumps(plan) if args.json else "\n".join(plan_lines(plan)))
    return 0
