"""Finding an adapter (a run folder or a Hub repo) and what it was trained on."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from phi3space.errors import ModelError, scrub
from phi3space.run import RunDir


def resolve_adapter(ref: str, token: str | None = None) -> Path:
    """A local run folder, or a Hub adapter repo downloaded to the cache (after asking the Hub whether ``token``
    may read it: the cache is shared)."""
    from phi3space.hub.access import check_read_access
    from phi3space.hub.errors import call
    from phi3space.refs import is_local_ref, ref_problem

    problem = ref_problem(ref, "adapter")
    if problem:  # never sent to the Hub in a URL, nor looked up as a file
        raise ModelError(problem, "Give a run folder (runs/NAME) or a Hub repo ID (user/name).")
    if is_local_ref(ref):
        path = Path(ref).expanduser()
        if not path.is_dir():
            raise ModelError(f"adapter not found: {ref}", "Give a run folder (runs/NAME) or a Hub repo ID (user/name).")
        if not RunDir(path).adapter_config.exists():
            raise ModelError(f"{ref} holds no adapter (no {RunDir.ADAPTER_CONFIG})",
                             "Point at the folder of a finished run (it holds the adapter's weights and config).")
        return _checked(path, ref)
    from huggingface_hub import snapshot_download

    def download() -> Path:
        check_read_access(ref, "model", token)
        return Path(snapshot_download(ref, token=token, allow_patterns=["adapter_*", "tokenizer*", "*.jinja", RunDir.CONFIG]))

    path = call(download, f"download adapter {ref}", ModelError, ref)
    if not RunDir(path).adapter_config.exists():
        raise ModelError(f"{ref} is not an adapter: the repo has no {RunDir.ADAPTER_CONFIG} (a base model, or a "
                         "merged one?)", f"To chat with a whole model give it as --base {ref}; --adapter takes a LoRA "
                         "adapter (a run folder or the repo a run pushed to).")
    return _checked(path, ref)


def _checked(path: Path, ref: str) -> Path:
    """``path`` when its adapter config is a JSON object (which base it names is read by ``adapter_base``)."""
    import json

    where = RunDir(path).adapter_config
    try:
        raw = json.loads(where.read_bytes())
    except (OSError, ValueError) as exc:
        why = f"cannot be read ({exc.strerror})" if isinstance(exc, OSError) else \
            f"is not JSON ({str(exc).splitlines()[0][:80]})"
        raise ModelError(f"the adapter {ref} is damaged: its {RunDir.ADAPTER_CONFIG} {why}",
                         "Push the adapter again from its run folder (python -m phi3space push RUN_DIR), or train "
                         "again.") from None
    if not isinstance(raw, dict):
        raise ModelError(f"the adapter {ref} is damaged: its {RunDir.ADAPTER_CONFIG} is not a JSON object",
                         "Push the adapter again from its run folder (python -m phi3space push RUN_DIR), or train "
                         "again.")
    return path


def _does_not_fit(ref: str, base: str, path: Path, exc: Exception) -> ModelError:
    return ModelError(f"adapter {ref} does not fit base model {base}: {scrub(str(exc)).splitlines()[0][:200]}",
                      f"Use the base it was trained on ({adapter_base(path)}) with --base.")


def adapter_base(adapter_dir: Path) -> str:
    """The base model the adapter in ``adapter_dir`` was trained on (RunDir.adapter_base; ModelError when it names none)."""
    return RunDir(adapter_dir).adapter_base()


def tokenizer_source(adapter_dir: Path, base: str) -> str:
    """Where an adapter's tokenizer is read: the adapter's folder when it saved one (a run's does), else its base."""
    return str(adapter_dir) if RunDir(adapter_dir).has_tokenizer() else base


def adapter_name(ref: str) -> str:
    """A peft adapter name for ``ref``: readable, and distinct for distinct refs."""
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', ref)[-40:]}_{hashlib.sha1(ref.encode()).hexdigest()[:8]}"

