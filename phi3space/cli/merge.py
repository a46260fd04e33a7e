"""``python -m phi3space merge ADAPTER``: fold an adapter into its base model and save a standalone model (no peft
needed to load it) in ``--out``, push it to ``--push-to``, or both; the web app's merge jobs run the same command."""

from __future__ import annotations

from phi3space.cli.common import run_dir_argument, stoppable, writer
from phi3space.engine.merge import merge_and_push
from phi3space.engine.modeling import quiet_libraries
from phi3space.errors import ConfigError
from phi3space.hub.auth import resolve_token
from phi3space.refs import check_repo_id


def make_parser(subparsers) -> None:
    """Add ``merge`` to ``subparsers``."""
    p = subparsers.add_parser("merge", help="fold an adapter into its base model and save a standalone model")
    p.add_argument("adapter", help="run folder or Hub repo ID of an adapter")
    p.add_argument("--out", help="folder for the merged model")
    p.add_argument("--push-to", metavar="REPO", help="upload the merged model to this Hub repo (user/name); "
                   "without --out it is built in a temporary folder, removed after the upload")
    p.add_argument("--public", dest="private", action="store_false", default=True, help="create the repo as public")
    p.add_argument("--base", help="base model (default: the adapter's own base)")
    run_dir_argument(p)
    p.set_defaults(func=main)


def main(args) -> int:
    """Merge ``args.adapter``; a stop (SIGTERM) ends it cleanly, removing its temporary folder."""
    if not args.out and not args.push_to:
        raise ConfigError(["merge needs --out DIR, --push-to REPO, or both"],
                          "e.g. python -m phi3space merge runs/my-run --out merged/ (or --push-to you/my-model)")
    if args.push_to:
        args.push_to = check_repo_id(args.push_to, "--push-to")
    stoppable("merge")
    quiet_libraries()
    result = merge_and_push(args.adapter, writer(args), out=args.out, push_to=args.push_to, base=args.base,
                            token=resolve_token(), private=args.private)
    if result["out"]:
        print(f"merged model saved in {result['out']} (load it with AutoModelForCausalLM.from_pretrained, no peft needed)")
    return 0
