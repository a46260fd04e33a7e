"""Export an adapter for the runners people use on their own machines: merge it into its 16-bit base, write GGUF
(phi3space.engine.gguf_file) and an Ollama ``Modelfile``, and push both (with a card that shows the ``ollama run``
and llama.cpp lines) to a Hub repo.

It streams: the base is loaded once as stored (bf16 for Phi-3), and each layer is merged (by peft, in float32) and written as the file
reaches it, then let go; peak memory is about the base's size plus the libraries (bench/export_memory.py). Files
are written under a temporary name (``.NAME.PID.part``) and renamed when whole, so a killed export never leaves a
broken file under the final name nor harms an earlier export's file; the next export into the folder removes the
parts of exports that are no longer running.

``python -m phi3space export RUN --quant q8_0 --out DIR`` runs this, and so does the web page's "Export to GGUF" job
(with ``--run-dir``: run_started, one progress event per stage, export (the files), push, run_finished; the same
contract as merge).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from phi3space.datadir import safe_name
from phi3space.engine.gguf_file import QUANTS, gguf_file_name, read_vocab, write_gguf
from phi3space.errors import ConfigError
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
    """Merge ``adapter`` into its base and write ``out``/<name>-<QUANT>.gguf and ``out``/Modelfile; with
    ``push_to`` (a repo ID, or 'auto' for <you>/<name>-GGUF), upload both with a card. Returns {gguf, modelfile,
    repo_id, url}.

    Raises:
        ConfigError: an unknown quant or an unwritable --out. AuthError: may not push there (checked first).
        ModelError / HubError: as merging and the upload report them; the error is in the events too.
    """
    from phi3space.engine.merge import _check_out

    if quant not in QUANTS:
        raise ConfigError([f"--quant: {quant!r} is not one of {', '.join(QUANTS)}"],
                          "k-quants (Q4_K_M, ...) need llama.cpp's llama-quantize: export f16, then quantize it there.")
    out = Path(out)
    created = not out.exists()  # a folder this export made goes again if it fails
    _check_out(out)
    reclaim_parts(out)
    name = safe_name(name or Path(str(adapter).rstrip("/")).name)  # a file name, whatever it was given
    result: dict = {"gguf": None, "modelfile": None, "repo_id": None, "url": None}
    with writer.stages("export", 4 + (2 if push_to else 0), adapter=str(adapter), push_to=push_to, quant=quant,
                     on_failed=(lambda: shutil.rmtree(out, ignore_errors=True)) if created else None) as stage:
        repo_id = None
        if push_to:
            from phi3space.hub.access import check_push_access

            stage(f"checking that you may push to {push_to}")
            repo_id = check_push_access(push_to, token, f"{name}-GGUF", private)
        target = out / gguf_file_name(name, quant)
        base = _write_merged(adapter, target, quant, name, token, stage)
        stage(f"writing the Ollama {MODELFILE}")
        _write_whole(out / MODELFILE, lambda part: part.write_text(modelfile(target.name, system, temperature), encoding="utf-8"))
        result.update(gguf=str(target), modelfile=str(out / MODELFILE))
        writer.emit("export", task="export", quant=quant, files=[target.name, MODELFILE], out=str(out))
        if push_to:
            from phi3space.hub.gguf_card import upload_gguf

            stage(f"uploading {target.name} ({target.stat().st_size / 1e6:.0f} MB) to {repo_id}")
            pushed = upload_gguf(out, [target.name, MODELFILE], repo_id, token, private, writer, base=base, quant=quant)
            result.update(repo_id=repo_id, url=pushed["url"])
        stage.model = result["url"] or result["gguf"]
    return result


def _write_merged(adapter: str, target: Path, quant: str, name: str, token: str | None, stage) -> str:
    """Load the base as stored with the adapter attached, and write the merged model as ``target`` a layer at a time
    (three stages). Returns the base's ID."""
    from phi3space.engine.adapters import _does_not_fit, adapter_base, resolve_adapter, tokenizer_source
    from phi3space.engine.merge import merged_weights
    from phi3space.engine.modeling import load_for_inference, load_tokenizer

    _give_freed_memory_back()
    stage(f"loading the adapter {adapter}")
    from peft import PeftModel

    path = resolve_adapter(str(adapter), token)  # downloaded once, when it is a Hub repo
    base = adapter_base(path)
    dtype = stored_dtype(base, token)
    stage(f"loading the base model {base} ({dtype})")
    model = load_for_inference(base, token, dtype=dtype, purpose="export")
    try:
        model = PeftModel.from_pretrained(model, str(path))
    except (RuntimeError, ValueError, KeyError) as exc:
        raise _does_not_fit(str(adapter), base, path, exc) from None
    cfg = model.get_base_model().config.to_dict()
    tokenizer = load_tokenizer(tokenizer_source(path, base), token, training=False)
    vocab = read_vocab(tokenizer, cfg["vocab_size"])
    del tokenizer
    stage(f"merging and writing {target.name} ({quant}), a layer at a time")
    _write_whole(target, lambda part: write_gguf(part, cfg, vocab, merged_weights(model), quant, name))
    return base


def _give_freed_memory_back() -> None:
    """Have glibc return every freed block of 1 MB or more to the system at once. By default it keeps blocks of up
    to 32 MB for reuse, and the layers' float32 copies, made and freed one after another, then pile up: an export
    of a 220 M parameter model peaked at 1.42 GB instead of 1.06 GB (bench/export_memory.py). Elsewhere, nothing."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: allocations this large are mapped, and unmapped when freed
    except (OSError, AttributeError):
        pass


def stored_dtype(base: str, token: str | None) -> str:
    """The dtype the base's weights are stored in (bfloat16 for Phi-3 on the Hub): loaded as stored, nothing is
    rounded before the GGUF's own type; an unknown one is read as bfloat16."""
    from transformers import AutoConfig

    try:
        dtype = getattr(AutoConfig.from_pretrained(base, token=token), "dtype", None)
    except (OSError, ValueError):  # loading the model says what is wrong, with a hint
        dtype = None
    name = str(dtype).removeprefix("torch.") if dtype is not None else ""
    return name if name in ("bfloat16", "float16", "float32") else "bfloat16"


def _write_whole(target: Path, write) -> None:
    """``write(part)`` a temporary file beside ``target``, then rename it to ``target``: a reader (or a kill) never
    sees half a file under the final name, and an earlier file stays whole until the new one is."""
    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        write(part)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)


def reclaim_parts(folder: Path) -> list[Path]:
    """Remove the temporary files of exports into ``folder`` whose process is gone (killed part-way). Returns them."""
    gone = []
    for part in folder.glob(".*.part"):
        pid = part.suffixes[-2].lstrip(".") if len(part.suffixes) >= 2 else ""
        if pid.isdigit() and not _alive(int(pid)):
            part.unlink(missing_ok=True)
            gone.append(part)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
