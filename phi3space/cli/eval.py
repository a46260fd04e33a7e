"""``python -m phi3space eval ADAPTER``: measure an adapter against its base model on held-out rows (the run's eval
rows, or ``--data``), here or on another backend (followed here to its end); the scores go on its Hub card."""

from __future__ import annotations

import json

from phi3space.cli.common import backend_arguments, print_event, run_dir_argument, stoppable, writer
from phi3space.engine.evaluate import evaluate
from phi3space.engine.modeling import quiet_libraries
from phi3space.errors import ConfigError
from phi3space.generation import GenerationSettings
from phi3space.hub.auth import resolve_token
from phi3space.jobs.kinds import EVAL
from phi3space.jobs.terminal import on_hub, run_elsewhere

SHOWN = ("rows", "base", "adapter")  # what --json prints


def make_parser(subparsers) -> None:
    """Add ``eval`` to ``subparsers``."""
    p = subparsers.add_parser("eval", help="measure an adapter against its base model on held-out rows")
    p.add_argument("source", help="run folder or Hub repo ID of an adapter")
    p.add_argument("--data", metavar="DATASET", help="rows to evaluate on: anything train takes as data.dataset "
                   "(default: the run's eval rows)")
    p.add_argument("--rows", type=int, default=50, metavar="N", help="evaluate on at most N rows (default 50)")
    p.add_argument("--max-new-tokens", type=int, default=GenerationSettings().max_new_tokens,
                   help=GenerationSettings.describe("max_new_tokens"))
    p.add_argument("--json", action="store_true", help="print the results as one JSON object on the last line")
    p.add_argument("--no-card", action="store_true", help="leave the adapter's Hub card as it is")
    run_dir_argument(p)
    backend_arguments(p)
    p.set_defaults(func=main)


def main(args) -> int:
    """Evaluate ``args.source``; with ``--json`` the results as the last line."""
    if args.rows < 1:
        raise ConfigError([f"--rows: {args.rows} (at least 1)"], "e.g. --rows 50")
    settings = GenerationSettings.checked(max_new_tokens=args.max_new_tokens)
    argv = [EVAL.name, on_hub(args.source), "--rows", str(args.rows), "--max-new-tokens", str(args.max_new_tokens)]
    argv += (["--data", args.data] if args.data else []) + (["--no-card"] if args.no_card else [])
    state = run_elsewhere(argv, args.backend, args.flavor, args.run_dir, resolve_token(), print_event,
                          (("data", args.data),) if args.data else (), push_to=on_hub(args.source))
    if state is not None:  # it ran elsewhere (Hugging Face Jobs): followed here to its end
        result = state.evaluation
    else:
        stoppable("evaluation")
        quiet_libraries()
        result = evaluate(args.source, writer(args), data=args.data, rows=args.rows, token=resolve_token(),
                          settings=settings, update_card=not args.no_card)
    if args.json:
        print(json.dumps({k: result[k] for k in SHOWN}))
    return 0
