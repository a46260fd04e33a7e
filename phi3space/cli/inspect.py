"""``python -m phi3space inspect DATASET``: how a dataset will be read and trained (its format, rows, lengths),
and one example as the model will see it."""

from __future__ import annotations

from phi3space import config
from phi3space.cli.common import set_argument
from phi3space.engine.modeling import quiet_libraries
from phi3space.engine.objectives import objective_of
from phi3space.hub.auth import resolve_token


def make_parser(subparsers) -> None:
    """Add ``inspect`` to ``subparsers``."""
    p = subparsers.add_parser("inspect", help="show how a dataset will be read and trained")
    p.add_argument("dataset", help="Hub dataset ID or local file/folder")
    set_argument(p, "e.g. data.split=test, model.base=..., training.max_length=1024")
    p.set_defaults(func=main)


def main(args) -> int:
    """Print the data report and the first training example."""
    cfg = config.from_dict({"data": {"dataset": args.dataset}}, args.set or [])
    quiet_libraries()
    objective = objective_of(cfg)  # SFT's rows, or DPO's pairs: a prompt with its chosen and rejected answers
    found = objective.rows_to_show(cfg, resolve_token())
    print("\n".join(found.report.lines()))
    print(f"\n{objective.example_title}:\n")
    print(objective.example_text(found.train[0], found.tokenizer))
    return 0
