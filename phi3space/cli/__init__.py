"""python -m phi3space train | merge | eval | export | inspect | chat | push | config | plan

  python -m phi3space train configs/example.yaml --set training.max_steps=50
  python -m phi3space plan configs/example.yaml
  python -m phi3space chat --adapter runs/my-run --prompt "Hello"

One module per subcommand, each with ``make_parser(subparsers)`` and ``main(args)``; a job kind's subcommand
(phi3space.jobs.kinds: what ``python -m phi3space <kind>`` runs in a job's process) is the module of its name.
Every user mistake exits with status 2 and a message plus a hint; a stopped run exits with 130.
"""

from __future__ import annotations

import argparse
from importlib import import_module
from types import ModuleType

from phi3space.cli import chat, common, config, inspect, push
from phi3space.jobs.kinds import KINDS

OTHERS = (inspect, chat, push, config)  # the subcommands that are not a job's


def commands() -> list[ModuleType]:
    """The subcommands' modules: one per job kind, then the others."""
    return [import_module(f"{__name__}.{kind}") for kind in KINDS] + list(OTHERS)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; a parsed command's ``func`` runs it."""
    parser = argparse.ArgumentParser(prog="python -m phi3space", description="Fine-tune Phi-3 with LoRA or QLoRA.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in commands():
        command.make_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand ``argv`` names (default: this process's arguments); its exit status."""
    args = build_parser().parse_args(argv)
    return common.run(args.func, args)
