"""``python -m phi3space chat``: talk to a trained adapter (or a base model), one ``--prompt`` or a loop on stdin,
its reply streamed."""

from __future__ import annotations

import sys
from dataclasses import fields

from phi3space.chat.engine import ChatEngine
from phi3space.config import DEFAULT_BASE
from phi3space.engine.adapters import adapter_base, resolve_adapter
from phi3space.engine.modeling import quiet_libraries
from phi3space.errors import ConfigError
from phi3space.generation import GenerationSettings
from phi3space.hub.auth import resolve_token


def make_parser(subparsers) -> None:
    """Add ``chat`` to ``subparsers``; its generation flags come from GenerationSettings (defaults and help)."""
    p = subparsers.add_parser("chat", help="talk to a trained adapter (or the base model)")
    p.add_argument("--adapter", help="run folder or Hub repo ID of an adapter")
    p.add_argument("--base", help="base model (default: the adapter's own base)")
    p.add_argument("--prompt", help="one message; without it, an interactive loop")
    p.add_argument("--system", help="system prompt")
    for f in fields(GenerationSettings):  # --max-new-tokens, --temperature, --top-p
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       help=GenerationSettings.describe(f.name))
    p.set_defaults(func=main)


def main(args) -> int:
    """Answer ``--prompt``, or each line read until an empty one or the end of input."""
    settings = GenerationSettings(**{f.name: getattr(args, f.name) for f in fields(GenerationSettings)})  # before any model loads
    if args.prompt is not None and not args.prompt.strip():
        raise ConfigError(["--prompt: empty"], "Type a message, or leave --prompt out to chat interactively.")
    quiet_libraries(data=False)
    token = resolve_token()
    base = args.base
    if args.adapter and not base:
        base = adapter_base(resolve_adapter(args.adapter, token))
    engine = ChatEngine(base or DEFAULT_BASE, token)
    history = [{"role": "system", "content": args.system}] if args.system else []

    def answer(prompt: str) -> None:
        history.append({"role": "user", "content": prompt})
        shown = ""
        for text in engine.stream(history, args.adapter, token=token, **settings.as_kwargs()):
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
        print()
        history.append({"role": "assistant", "content": shown.strip()})

    if args.prompt is not None:
        answer(args.prompt)
        return 0
    print("chat with the model; an empty line or Ctrl-D ends", file=sys.stderr)
    while True:
        try:
            prompt = input("> " if sys.stdin.isatty() else "")  # piped input gets replies only
        except EOFError:
            return 0
        if not prompt.strip():
            return 0
        answer(prompt)
