"""``python -m phi3space push RUN_DIR``: push a finished run's adapter (and its card and config) to the Hub, e.g.
one whose push failed or was held."""

from __future__ import annotations

from phi3space.engine.modeling import quiet_libraries
from phi3space.hub.auth import resolve_token
from phi3space.hub.push import push_run
from phi3space.refs import check_repo_id


def make_parser(subparsers) -> None:
    """Add ``push`` to ``subparsers``."""
    p = subparsers.add_parser("push", help="push a finished run's adapter to the Hub")
    p.add_argument("run_dir", help="run folder")
    p.add_argument("--to", help="repo ID (default: the run's output.push_to, or auto)")
    p.add_argument("--public", dest="private", action="store_false", default=None, help="create the repo as public")
    p.set_defaults(func=main)


def main(args) -> int:
    """Push ``args.run_dir``; print the repo's address and the commit."""
    if args.to is not None:
        check_repo_id(args.to, "--to", hint="Give the repo to push to as owner/name, e.g. your-name/my-adapter.")
    quiet_libraries()
    result = push_run(args.run_dir, repo_id=args.to, token=resolve_token(), private=args.private)
    print(f"pushed {args.run_dir} to {result['url']} (commit {result['commit'][:10]})")
    return 0
