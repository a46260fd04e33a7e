"""Export an adapter for the runners people use on their own machines: merge it into its 16-bit base, write GGUF
(phi3space.engine.gguf_file) and an Ollama ``Modelfile``, and push both (with a card that shows the ``ollama run``
and llama.cpp lines) to a Hub repo.

``python -m phi3space export RUN --quant q8_0 --out DIR`` runs this, and so does the web page's "Export to GGUF" job
(with ``--run-dir``: run_started, one progress event per stage, export (the files), push, run_finished; the same
contract as merge).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from phi3space.datadir import safe_name
from phi3space.engine.gguf_file import QUANTS, write_gguf
from phi3space.errors import Cancelled, ConfigError, Phi3SpaceError
from phi3space.run import EventWriter

MODELFILE = "Modelfile"
# Ollama's Go template for Phi-3's chat format (system, user and assistant turns, each closed by <|end|>).
OLLAMA_TEMPLATE = ("{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}{{ if .Prompt }}<|user|>\n"
                   "{{ .Prompt }}<|end|>\n{{ end }}<|assistant|>\n{{ .Response }}<|end|>\n")
STOPS = ("<|end|>", "<|user|>", "<|assistant|>", "<|endoftext|>")


def modelfile(gguf_name: str, system: str | None = None, temperature: float | None = None) -> str:
    """An Ollama Modelfile for the GGUF file beside it: Phi-3's template, stop at <|end|> (and the other turn
    tokens), the system prompt and temperature when given."""
    lines = [f"FROM ./{gguf_name}", "", f'TEMPLATE """{OLLAMA_TEMPLATE}"""', ""]
    lines += [f'PARAMETER stop "{stop}"' for stop in STOPS]
    if temperature is not None:
        lines.append(f"PARAMETER temperature {temperature:g}")
    if system:
        lines += ["", f'SYSTEM """{system.replace(chr(34) * 3, chr(39) * 3)}"""']
    return "\n".join(lines) + "\n"


def export(adapter: str, quant: str, writer: EventWriter, out: str | Path, push_to: str | None = None,
           token: str | None = None, private: bool = True, system: str | None = None,
           temperature: float | None = None, name: str | None = None) -> dict:
    """Merge ``adapter`` into its base and write ``out``/<name>-<quant>.gguf and ``out``/Modelfile; with
    ``push_to`` (a repo ID, or 'auto' for <you>/<name>-GGUF), upload both with a card. Returns {gguf, modelfile,
    repo_id, url}.

    Raises:
        ConfigError: an unknown quant or an unwritable --out. AuthError: may not push there (checked first).
        ModelError / HubError: as merging and the upload report them; the error is in the events too.
    """
    from phi3space.engine.adapters import adapter_base, resolve_adapter
    from phi3space.engine.merge import _check_out, merge_adapter

    if quant not in QUANTS:
        raise ConfigError([f"--quant: {quant!r} is not one of {', '.join(QUANTS)}"],
                          "k-quants (Q4_K_M, ...) need llama.cpp's llama-quantize: export f16, then quantize it there.")
    out = Path(out)
    _check_out(out)
    total = 6 + (2 if push_to else 0)
    done = 0
    writer.emit("run_started", task="export", adapter=str(adapter), push_to=push_to, quant=quant, max_steps=total)

    def stage(text: str) -> None:
        nonlocal done
        done += 1
        writer.emit("progress", task="export", step=done, max_steps=total, stage=text)

    merged = Path(tempfile.mkdtemp(prefix="phi3space-export-"))
    name = safe_name(name or Path(str(adapter).rstrip("/")).name)  # a file name, whatever it was given
    result: dict = {"gguf": None, "modelfile": None, "repo_id": None, "url": None}
    try:
        repo_id = None
        if push_to:
            from phi3space.hub.access import check_push_access

            stage(f"checking that you may push to {push_to}")
            repo_id = check_push_access(push_to, token, f"{name}-GGUF", private)
        path = resolve_adapter(str(adapter), token)  # downloaded once, when it is a Hub repo
        base = adapter_base(path)
        merge_adapter(str(path), merged, base=base, token=token, on_stage=stage)
        target = out / f"{name}-{quant}.gguf"
        stage(f"writing {target.name} ({quant})")
        write_gguf(merged, target, quant, name=name)
        stage(f"writing the Ollama {MODELFILE}")
        (out / MODELFILE).write_text(modelfile(target.name, system, temperature), encoding="utf-8")
        result.update(gguf=str(target), modelfile=str(out / MODELFILE))
        writer.emit("export", task="export", quant=quant, files=[target.name, MODELFILE], out=str(out))
        if push_to:
            from phi3space.hub.gguf_card import upload_gguf

            stage(f"uploading {target.name} ({target.stat().st_size / 1e6:.0f} MB) to {repo_id}")
            pushed = upload_gguf(out, [target.name, MODELFILE], repo_id, token, private, writer, base=base, quant=quant)
            result.update(repo_id=repo_id, url=pushed["url"])
    except Cancelled:
        writer.finish("cancelled", task="export", step=done, adapter=None)
        raise
    except Phi3SpaceError as exc:
        writer.finish("failed", {"kind": exc.kind, "message": exc.message, "hint": exc.hint}, task="export",
                      step=done, adapter=None)
        raise
    finally:
        shutil.rmtree(merged, ignore_errors=True)
    writer.finish("completed", task="export", step=done, adapter=None, model=result["url"] or result["gguf"])
    return result
