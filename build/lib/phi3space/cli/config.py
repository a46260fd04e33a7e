"""``python -m phi3space config``: the run config reference (every key, its default and meaning), the table the
README carries."""

from __future__ import annotations

from phi3space.jobs.spec import reference


def make_parser(subparsers) -> None:
    """Add ``config`` to ``subparsers``."""
    p = subparsers.add_parser("config", help="print the run config reference (every key, its default and meaning)")
    p.set_defaults(func=main)


def main(args) -> int:
    """Print the reference."""
    print(reference(), end="")
    return 0
