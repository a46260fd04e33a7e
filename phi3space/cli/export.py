"""``python -m phi3space export ADAPTER``: merge an adapter into its base and write a GGUF file plus an Ollama
Modelfile into ``--out``, pushed to ``--push-to``; or on another backend, which pushes them (followed here to its
end)."""

from __future__ import annotations

from pathlib import Path

from phi3space.cli.common import backend_arguments, print_event, run_dir_argument, stoppable, writer
from phi3space.datadir import safe_name
from phi3space.engine.export import export
from phi3space.engine.gguf_file import QUANTS
from phi3space.engine.modeling import quiet_libraries
from phi3space.errors import ConfigError
from phi3space.generation import GenerationSettings
from phi3space.hub.auth import resolve_token
from phi3space.hub.gguf_card import run_commands
from phi3space.jobs.hf import protocol as job_protocol
from phi3space.jobs.kinds import EXPORT
from phi3space.jobs.terminal import export_destination, on_hub, run_elsewhere
from phi3space.refs import check_repo_id


def make_parser(subparsers) -> None:
    """Add ``export`` to ``subparsers``."""
    p = subparsers.add_parser("export", help="merge an adapter into its base and write GGUF plus an Ollama Modelfile")
    p.add_argument("source", help="run folder or Hub repo ID of an adapter")
    p.add_argument("--quant", choices=QUANTS, default="q8_0",
                   help="GGUF tensor type (k-quants such as Q4_K_M need llama.cpp's llama-quantize)")
    p.add_argument("--out", help="folder for the .gguf file and the Modelfile (this machine)")
    p.add_argument("--push-to", metavar="REPO", help="upload both to this Hub repo (user/name, or auto for "
                   "<you>/<name>-GGUF)")
    p.add_argument("--public", dest="private", action="store_false", default=True, help="create the repo as public")
    p.add_argument("--system", help="system prompt for the Modelfile")
    p.add_argument("--temperature", type=float, help="temperature for the Modelfile")
    p.add_argument("--name", help="the model's name: of the .gguf file and the auto repo (default: the adapter's folder)")
    run_dir_argument(p)
    backend_arguments(p)
    p.set_defaults(func=main)


def main(args) -> int:
    """Export ``args.source``; print the files written, where they went, and how to run them."""
    if args.push_to and args.push_to != "auto":
        args.push_to = check_repo_id(args.push_to, "--push-to")
    settings = GenerationSettings.checked(temperature=args.temperature) if args.temperature is not None else None
    name = safe_name(args.name or Path(args.source.rstrip("/")).name)
    argv = [EXPORT.name, on_hub(args.source), "--quant", args.quant, "--name", name] + ([] if args.private else ["--public"])
    argv += (["--system", args.system] if args.system else []) + (["--temperature", f"{args.temperature:g}"]
                                                                  if args.temperature is not None else [])
    state = run_elsewhere(argv, args.backend, args.flavor, args.run_dir, resolve_token(), print_event,
                          push_to=args.push_to or "auto", prepare=export_destination(name, args.private, resolve_token()))
    if state is not None:  # it ran elsewhere (Hugging Face Jobs) and pushed its files
        print(f"wrote {' and '.join(state.exported)}; on the Hub: {state.model_url}")
        _how_to_run(state.exported[0], state.model_url)
        return 0
    if not args.out:
        raise ConfigError(["export needs --out DIR on this machine"], "e.g. --out exported/")
    if job_protocol.inside_job(args.out):  # in a Hugging Face job: its files in its run folder
        args.out = str(job_protocol.job_run_dir(args.out))
    stoppable("export")
    quiet_libraries(data=False)
    result = export(args.source, args.quant, writer(args), out=args.out, push_to=args.push_to, token=resolve_token(),
                    private=args.private, system=args.system, temperature=settings and settings.temperature,
                    name=args.name)
    print(f"wrote {result['gguf']} and {result['modelfile']}" + (f"; on the Hub: {result['url']}" if result["url"] else ""))
    _how_to_run(result["gguf"], result["repo_id"])
    return 0


def _how_to_run(gguf: str, repo: str | None) -> None:
    print("run it:\n" + "\n".join(f"  {line}" for line in run_commands(gguf, repo)))
