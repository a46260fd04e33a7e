"""python -m phi3space train | inspect | chat | merge | eval | export | push | config

  python -m phi3space train configs/example.yaml --set training.max_steps=50
  python -m phi3space chat --adapter runs/my-run --prompt "Hello"

Every user mistake exits with status 2 and a message plus a hint; a stopped run exits with 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields

from phi3space.errors import Cancelled, Phi3SpaceError
from phi3space.generation import GenerationSettings
from phi3space.report import format_event
from phi3space.run import EventWriter, RunDir


def _quiet_libraries(data: bool = True) -> None:
    """Our progress lines replace the libraries' progress bars and warnings. ``data``: datasets too (chat never
    imports it)."""
    import logging
    import warnings

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "kernels package missing" on CPU: harmless
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    import transformers

    if data:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _print_event(e: dict) -> None:
    line = format_event(e)
    if line:
        print(line, flush=True)


def cmd_train(args) -> int:
    from phi3space.hub.auth import resolve_token
    from phi3space.jobs import spec
    from phi3space.jobs.hf import protocol as job_protocol

    echo = _print_event
    if job_protocol.inside_job(args.config):  # in a Hugging Face job: the config came in an environment value
        cfg, echo = job_protocol.job_config(args.config, args.set or []), job_protocol.job_echo(_print_event)
    else:
        cfg = spec.load(args.config, args.set or [])
        done = spec.backend_class(cfg.compute.backend).train_from_terminal(cfg, args.resume, resolve_token(), _print_event)
        if done is not None:  # it ran elsewhere (Hugging Face Jobs): followed here to its end
            print(done)
            return 0
    _quiet_libraries()
    from phi3space.engine.training import train

    try:
        run_dir = train(cfg, resume=args.resume, token=resolve_token(), echo=echo)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # under accelerate launch / torchrun
            dist.destroy_process_group()
    print(f"done: {run_dir}")
    return 0


def cmd_inspect(args) -> int:
    from phi3space import config
    from phi3space.engine.objectives import objective_of
    from phi3space.hub.auth import resolve_token

    cfg = config.from_dict({"data": {"dataset": args.dataset}}, args.set or [])
    _quiet_libraries()
    objective = objective_of(cfg)  # SFT's rows, or DPO's pairs: a prompt with its chosen and rejected answers
    found = objective.rows_to_show(cfg, resolve_token())
    print("\n".join(found.report.lines()))
    print(f"\n{objective.example_title}:\n")
    print(objective.example_text(found.train[0], found.tokenizer))
    return 0


def cmd_chat(args) -> int:
    from phi3space.chat.engine import ChatEngine
    from phi3space.engine.adapters import adapter_base, resolve_adapter
    from phi3space.hub.auth import resolve_token

    settings = GenerationSettings(**{f.name: getattr(args, f.name) for f in fields(GenerationSettings)})  # before any model loads
    if args.prompt is not None and not args.prompt.strip():
        from phi3space.errors import ConfigError

        raise ConfigError(["--prompt: empty"], "Type a message, or leave --prompt out to chat interactively.")
    _quiet_libraries(data=False)
    token = resolve_token()
    base = args.base
    if args.adapter and not base:
        base = adapter_base(resolve_adapter(args.adapter, token))
    if not base:
        from phi3space.config import DEFAULT_BASE

        base = DEFAULT_BASE
    engine = ChatEngine(base, token)
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


def cmd_merge(args) -> int:
    import signal

    from phi3space.engine.merge import merge_and_push
    from phi3space.errors import ConfigError
    from phi3space.hub.auth import resolve_token
    from phi3space.refs import check_repo_id

    if not args.out and not args.push_to:
        raise ConfigError(["merge needs --out DIR, --push-to REPO, or both"],
                          "e.g. python -m phi3space merge runs/my-run --out merged/ (or --push-to you/my-model)")
    if args.push_to:
        args.push_to = check_repo_id(args.push_to, "--push-to")

    def stop(signum, frame):  # Stop in the web app: end cleanly, removing the temporary folder
        raise Cancelled("the merge was stopped")

    signal.signal(signal.SIGTERM, stop)
    _quiet_libraries()
    writer = _run_dir(args).writer(echo=_print_event) if args.run_dir else EventWriter(None, echo=_print_event)
    result = merge_and_push(args.adapter, writer, out=args.out, push_to=args.push_to, base=args.base,
                            token=resolve_token(), private=args.private)
    if result["out"]:
        print(f"merged model saved in {result['out']} (load it with AutoModelForCausalLM.from_pretrained, no peft needed)")
    return 0


def _stoppable(what: str) -> None:
    import signal

    def stop(signum, frame):  # Stop in the web app: end cleanly, with the job's last word
        raise Cancelled(f"the {what} was stopped")

    signal.signal(signal.SIGTERM, stop)


def _writer(args) -> EventWriter:
    from phi3space.jobs.hf import protocol as job_protocol

    if args.run_dir and job_protocol.inside_job(args.run_dir):  # in a Hugging Face job: its events echoed to its log
        return RunDir(job_protocol.job_run_dir(args.run_dir)).writer(echo=job_protocol.job_echo(_print_event))
    return _run_dir(args).writer(echo=_print_event) if args.run_dir else EventWriter(None, echo=_print_event)


def _run_dir(args) -> RunDir:
    """--run-dir, a folder (made if missing) for the command's events.

    Raises:
        ConfigError: it names a file, or a folder that cannot be made.
    """
    from phi3space.errors import ConfigError

    run = RunDir(args.run_dir)
    hint = "Give a folder for the events, e.g. --run-dir runs/my-eval (made if missing)."
    if run.path.exists() and not run.path.is_dir():
        raise ConfigError([f"--run-dir: {run.path} is a file, not a folder"], hint)
    try:
        run.path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError([f"--run-dir: cannot make {run.path} ({exc.strerror})"], hint) from None
    return run


def cmd_eval(args) -> int:
    import json

    from phi3space.engine.evaluate import evaluate
    from phi3space.errors import ConfigError
    from phi3space.hub.auth import resolve_token

    if args.rows < 1:
        raise ConfigError([f"--rows: {args.rows} (at least 1)"], "e.g. --rows 50")
    settings = GenerationSettings.checked(max_new_tokens=args.max_new_tokens)
    from phi3space.jobs.terminal import on_hub, run_elsewhere

    argv = ["eval", on_hub(args.source), "--rows", str(args.rows), "--max-new-tokens", str(args.max_new_tokens)]
    argv += (["--data", args.data] if args.data else []) + (["--no-card"] if args.no_card else [])
    state = run_elsewhere(argv, args.backend, args.flavor, args.run_dir, resolve_token(), _print_event,
                          (("data", args.data),) if args.data else (), push_to=on_hub(args.source))
    if state is not None:  # it ran elsewhere (Hugging Face Jobs): followed here to its end
        if args.json:
            print(json.dumps({k: state.evaluation[k] for k in ("rows", "base", "adapter")}))
        return 0
    _stoppable("evaluation")
    _quiet_libraries()
    result = evaluate(args.source, _writer(args), data=args.data, rows=args.rows, token=resolve_token(),
                      settings=settings, update_card=not args.no_card)
    if args.json:
        print(json.dumps({k: result[k] for k in ("rows", "base", "adapter")}))
    return 0


def cmd_export(args) -> int:
    from pathlib import Path

    from phi3space.datadir import safe_name
    from phi3space.engine.export import export
    from phi3space.hub.auth import resolve_token
    from phi3space.jobs.terminal import export_destination, on_hub, run_elsewhere
    from phi3space.refs import check_repo_id

    if args.push_to and args.push_to != "auto":
        args.push_to = check_repo_id(args.push_to, "--push-to")
    settings = GenerationSettings.checked(temperature=args.temperature) if args.temperature is not None else None
    name = safe_name(args.name or Path(args.source.rstrip("/")).name)
    argv = ["export", on_hub(args.source), "--quant", args.quant, "--name", name] + ([] if args.private else ["--public"])
    argv += (["--system", args.system] if args.system else []) + (["--temperature", f"{args.temperature:g}"]
                                                                  if args.temperature is not None else [])
    state = run_elsewhere(argv, args.backend, args.flavor, args.run_dir, resolve_token(), _print_event,
                          push_to=args.push_to or "auto", prepare=export_destination(name, args.private, resolve_token()))
    if state is not None:  # it ran elsewhere (Hugging Face Jobs) and pushed its files
        print(f"wrote {' and '.join(state.exported)}; on the Hub: {state.model_url}")
        from phi3space.hub.gguf_card import run_commands

        print("run it:\n" + "\n".join(f"  {line}" for line in run_commands(state.exported[0], state.model_url)))
        return 0
    if not args.out:
        from phi3space.errors import ConfigError

        raise ConfigError(["export needs --out DIR on this machine"], "e.g. --out exported/")
    if args.out.startswith("env:"):  # in a Hugging Face job: its files in its run folder
        from phi3space.jobs.hf import protocol as job_protocol

        args.out = str(job_protocol.job_run_dir(args.out))
    _stoppable("export")
    _quiet_libraries(data=False)
    result = export(args.source, args.quant, _writer(args), out=args.out, push_to=args.push_to, token=resolve_token(),
                    private=args.private, system=args.system, temperature=settings and settings.temperature,
                    name=args.name)
    print(f"wrote {result['gguf']} and {result['modelfile']}" + (f"; on the Hub: {result['url']}" if result["url"] else ""))
    from phi3space.hub.gguf_card import run_commands

    print("run it:\n" + "\n".join(f"  {line}" for line in run_commands(result["gguf"], result["repo_id"])))
    return 0


def cmd_push(args) -> int:
    from phi3space.hub.auth import resolve_token
    from phi3space.hub.push import push_run
    from phi3space.refs import check_repo_id

    if args.to is not None:
        check_repo_id(args.to, "--to", hint="Give the repo to push to as owner/name, e.g. your-name/my-adapter.")
    _quiet_libraries()
    result = push_run(args.run_dir, repo_id=args.to, token=resolve_token(), private=args.private)
    print(f"pushed {args.run_dir} to {result['url']} (commit {result['commit'][:10]})")
    return 0


def cmd_config(args) -> int:
    from phi3space.jobs.spec import reference

    print(reference(), end="")
    return 0


def _backend_arguments(p) -> None:
    from phi3space.jobs.spec import BACKENDS, DEFAULT_BACKEND

    p.add_argument("--backend", choices=tuple(BACKENDS), default=DEFAULT_BACKEND,
                   help="where it runs, as compute.backend; elsewhere than here it is followed to its end (the adapter "
                        "and data must be on the Hub, an export is pushed: --push-to, default auto)")
    p.add_argument("--flavor", help="the hardware there (Hugging Face Jobs: default the smallest GPU flavor)")


def build_parser() -> argparse.ArgumentParser:
    from phi3space.engine.gguf_file import QUANTS  # (no heavy import there)

    parser = argparse.ArgumentParser(prog="python -m phi3space", description="Fine-tune Phi-3 with LoRA or QLoRA.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train from a YAML run config")
    p.add_argument("config", help="YAML run config (see configs/); compute.backend: hf-jobs trains on Hugging Face Jobs")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. lora.r=8 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of output.dir")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("inspect", help="show how a dataset will be read and trained")
    p.add_argument("dataset", help="Hub dataset ID or local file/folder")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="e.g. data.split=test, model.base=..., training.max_length=1024")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("chat", help="talk to a trained adapter (or the base model)")
    p.add_argument("--adapter", help="run folder or Hub repo ID of an adapter")
    p.add_argument("--base", help="base model (default: the adapter's own base)")
    p.add_argument("--prompt", help="one message; without it, an interactive loop")
    p.add_argument("--system", help="system prompt")
    for f in fields(GenerationSettings):  # --max-new-tokens, --temperature, --top-p
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       help=GenerationSettings.describe(f.name))
    p.set_defaults(func=cmd_chat)
    p = sub.add_parser("merge", help="fold an adapter into its base model and save a standalone model")
    p.add_argument("adapter", help="run folder or Hub repo ID of an adapter")
    p.add_argument("--out", help="folder for the merged model")
    p.add_argument("--push-to", metavar="REPO", help="upload the merged model to this Hub repo (user/name); "
                   "without --out it is built in a temporary folder, removed after the upload")
    p.add_argument("--public", dest="private", action="store_false", default=True, help="create the repo as public")
    p.add_argument("--base", help="base model (default: the adapter's own base)")
    p.add_argument("--run-dir", help="also write progress events to this folder's events file (the web app's jobs)")
    p.set_defaults(func=cmd_merge)
    p = sub.add_parser("eval", help="measure an adapter against its base model on held-out rows")
    p.add_argument("source", help="run folder or Hub repo ID of an adapter")
    p.add_argument("--data", metavar="DATASET", help="rows to evaluate on: anything train takes as data.dataset "
                   "(default: the run's eval rows)")
    p.add_argument("--rows", type=int, default=50, metavar="N", help="evaluate on at most N rows (default 50)")
    p.add_argument("--max-new-tokens", type=int, default=GenerationSettings().max_new_tokens,
                   help=GenerationSettings.describe("max_new_tokens"))
    p.add_argument("--json", action="store_true", help="print the results as one JSON object on the last line")
    p.add_argument("--no-card", action="store_true", help="leave the adapter's Hub card as it is")
    p.add_argument("--run-dir", help="also write progress events to this folder's events file (the web app's jobs)")
    _backend_arguments(p)
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("export", help="merge an adapter into its base and write GGUF plus an Ollama Modelfile")
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
    p.add_argument("--run-dir", help="also write progress events to this folder's events file (the web app's jobs)")
    _backend_arguments(p)
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("push", help="push a finished run's adapter to the Hub")
    p.add_argument("run_dir", help="run folder")
    p.add_argument("--to", help="repo ID (default: the run's output.push_to, or auto)")
    p.add_argument("--public", dest="private", action="store_false", default=None, help="create the repo as public")
    p.set_defaults(func=cmd_push)
    p = sub.add_parser("config", help="print the run config reference (every key, its default and meaning)")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Cancelled as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 130
    except Phi3SpaceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
