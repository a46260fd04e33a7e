"""Merge an adapter into its base model and push the merged 16-bit model to the Hub, reporting each stage.

``python -m phi3space merge RUN --push-to you/name`` runs this, and so does the web page's "Merge and push" job
(with ``--run-dir``, where its events go: run_started, one progress event per stage, push, run_finished, or error
then run_finished; the same contract as training, so the page follows it like a training run).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from phi3space.engine.adapters import _does_not_fit, adapter_base, resolve_adapter, tokenizer_source
from phi3space.engine.modeling import load_for_inference, load_tokenizer
from phi3space.errors import ConfigError
from phi3space.run import EventWriter, RunDir


def _size(folder: Path) -> str:
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return f"{total / 1e9:.1f} GB" if total >= 1e8 else f"{total / 1e6:.1f} MB"


def _card(base: str, adapter: str, repo_id: str) -> str:
    return (f"---\nbase_model: {base}\nlibrary_name: transformers\ntags:\n- phi3\n- phi3space\n- merged\n---\n\n"
            f"# {repo_id.split('/')[-1]}\n\n{base} with the LoRA adapter `{adapter}` merged into its weights "
            f"(peft `merge_and_unload`) by phi3space. It loads without peft:\n\n```python\n"
            f"from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"model = AutoModelForCausalLM.from_pretrained(\"{repo_id}\")\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"{repo_id}\")\n```\n")


def upload_model(folder: Path, repo_id: str, token: str | None, private: bool, writer: EventWriter) -> dict:
    """Create ``repo_id`` (exist_ok) and upload the merged model folder in one commit; record it as a push event."""
    from huggingface_hub import HfApi

    from phi3space.hub.errors import call

    api = HfApi(token=token)
    log = lambda msg: writer.emit("log", message=msg)  # noqa: E731
    url = call(lambda: api.create_repo(repo_id, private=private, exist_ok=True), "create repo", ref=repo_id, on_retry=log)
    info = call(lambda: api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="phi3space: merged model"),
                "upload", ref=repo_id, on_retry=log)
    result = {"repo_id": repo_id, "url": str(url).rstrip("/") if url else f"https://huggingface.co/{repo_id}",
              "commit": getattr(info, "oid", None) or ""}
    writer.emit("push", what="model", **result)
    return result


def _check_out(out: Path) -> None:
    """The merged model's folder can be written: a new or existing folder, never a file.

    Raises:
        ConfigError: a file is there, or the folder cannot be created or written.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError([f"--out {out} is a file, not a folder"], "Give a folder for the merged model, e.g. --out merged/.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".phi3space-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError([f"--out {out} cannot be written ({exc.strerror or exc})"],
                          "Give a folder you may write to, e.g. --out merged/.") from None


def merge_and_push(adapter: str, writer: EventWriter, out: str | Path | None = None, push_to: str | None = None,
                   base: str | None = None, token: str | None = None, private: bool = True) -> dict:
    """Merge ``adapter`` into its base; save it in ``out`` and/or push it to ``push_to`` (then a temporary folder
    holds it until the upload is done). Returns {out, repo_id, url}.

    Raises:
        AuthError: no token, or one that may not push to ``push_to`` (checked before any model loads).
        ModelError / HubError: as merge_adapter and the upload report them; the error is in the events too.
    """
    from phi3space.engine.adapters import adapter_base, resolve_adapter
    from phi3space.engine.merge import merge_adapter
    from phi3space.hub.access import check_push_access

    created = bool(out) and not Path(out).exists()  # a merge that fails leaves no folder it made
    if out:
        _check_out(Path(out))  # before any model loads
    folder = Path(out) if out else Path(tempfile.mkdtemp(prefix="phi3space-merged-"))
    result: dict = {"out": str(folder) if out else None, "repo_id": None, "url": None}
    try:
        with writer.stages("merge", 4 + (2 if push_to else 0), adapter=str(adapter), push_to=push_to,
                         on_failed=(lambda: shutil.rmtree(folder, ignore_errors=True)) if created else None) as stage:
            if push_to:
                stage(f"checking that you may push to {push_to}")
                name = f"{Path(str(adapter).rstrip('/')).name}-merged"
                repo_id = check_push_access(push_to, token, name, private)
            path = resolve_adapter(str(adapter), token)  # downloaded once, when it is a Hub repo
            base = base or adapter_base(path)
            merge_adapter(str(path), folder, base=base, token=token, on_stage=stage)
            if push_to:
                RunDir(folder).card.write_text(_card(base, str(adapter), repo_id), encoding="utf-8")
                stage(f"uploading {_size(folder)} to {repo_id}")
                pushed = upload_model(folder, repo_id, token, private, writer)
                result.update(repo_id=repo_id, url=pushed["url"])
            stage.model = result["url"] or result["out"]
    finally:
        if not out:
            shutil.rmtree(folder, ignore_errors=True)
    return result



def merge_adapter(adapter: str, out_dir: str | Path, base: str | None = None, token: str | None = None,
                  on_stage: Callable[[str], None] | None = None) -> Path:
    """Fold an adapter into its base model's weights (peft's merge_and_unload) and save a plain transformers model.

    QLoRA adapters are merged into the 16-bit base, not the 4-bit one, so nothing is lost to quantisation.
    ``on_stage`` hears each of the four stages (adapter, base model, merge, save) as it starts.

    Raises:
        ModelError: adapter or base not found, or the adapter does not fit the base.
    """
    stage = on_stage or (lambda text: None)
    stage(f"loading the adapter {adapter}")  # (importing peft and torch takes a while on its own)
    from peft import PeftModel

    path = resolve_adapter(adapter, token)
    base = base or adapter_base(path)
    stage(f"loading the base model {base} (16-bit)")
    model = load_for_inference(base, token, purpose="merge")
    stage("merging the adapter into the base weights")
    try:
        merged = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as exc:
        raise _does_not_fit(adapter, base, path, exc) from None
    out = Path(out_dir)
    stage(f"saving the merged model to {out}")
    merged.save_pretrained(out)
    load_tokenizer(tokenizer_source(path, base), token).save_pretrained(out)
    return out


def merged_weights(model) -> list[tuple[str, tuple[int, ...], Callable]]:
    """The weights of ``model`` (a PeftModel) with its adapter merged, as (name, shape, make) in the base model's own
    names, for engine.gguf_file.write_gguf. Nothing is merged until asked: ``make()`` has peft merge that one layer
    in float32 (so a small update is not lost to bf16 rounding) and hands the weight over, and the model lets go of
    it; so the whole model is never held twice, nor in float32."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    owners = {f"{name}.base_layer.weight": m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    saved = f".modules_to_save.{model.active_adapter}."
    weights = []
    for name, param in base.named_parameters():
        if ".lora_" in name or ".original_module." in name:
            continue
        plain = name.replace(".base_layer.", ".").replace(saved, ".")
        weights.append((plain, tuple(param.shape), partial(_hand_over, param, owners.get(name))))
    return weights


def _hand_over(param, lora_layer):
    import torch

    if lora_layer is not None:
        param.data = param.data.float()
        lora_layer.merge()
    values = param.data
    param.data = torch.empty(0, dtype=values.dtype, device=values.device)
    return values

