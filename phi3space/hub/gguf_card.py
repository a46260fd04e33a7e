"""A GGUF export's repo: its card (how to run it with Ollama and llama.cpp) and the upload of the GGUF file, the
Modelfile and the card in one commit."""

from __future__ import annotations

from pathlib import Path

from phi3space.refs import is_hub_id
from phi3space.run import EventWriter, RunDir


def gguf_card(repo_id: str, gguf_file: str, quant: str, base: str | None) -> str:
    """The card: front matter the Hub indexes (gguf, base model) and the lines that run the file."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(base_model=base if base and is_hub_id(base) else None, library_name="gguf",
                         pipeline_tag="text-generation", tags=["gguf", "phi3", "phi3space", "ollama", "llama.cpp"])
    body = f"""
# {repo_id.split('/')[-1]}

A Phi-3 fine-tune exported by phi3space: the LoRA adapter merged into its 16-bit base{f' ({base})' if base else ''}
and written as GGUF ({quant}), with Phi-3's chat template and `<|end|>` as the end-of-generation token in its metadata.

## Run it

Ollama:

```sh
ollama run hf.co/{repo_id}
```

or with the `Modelfile` in this repo (template, stop tokens, system prompt and temperature):

```sh
huggingface-cli download {repo_id} {gguf_file} Modelfile --local-dir .
ollama create {repo_id.split('/')[-1].lower()} -f Modelfile
```

llama.cpp:

```sh
llama-cli --hf-repo {repo_id} --hf-file {gguf_file} -cnv
llama-server --hf-repo {repo_id} --hf-file {gguf_file}
```

Smaller files (Q4_K_M and the other k-quants) come from llama.cpp's quantizer:
`llama-quantize {gguf_file} model-Q4_K_M.gguf Q4_K_M` (best from an f16 export).
"""
    return str(ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body))


def upload_gguf(folder: Path, files: list[str], repo_id: str, token: str | None, private: bool, writer: EventWriter,
                base: str | None, quant: str) -> dict:
    """Create ``repo_id`` (exist_ok) and upload ``files`` of ``folder`` with the card in one commit; record it as a
    push event (what: gguf)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from phi3space.hub.errors import call

    api = HfApi(token=token)
    log = lambda msg: writer.emit("log", message=msg)  # noqa: E731
    url = call(lambda: api.create_repo(repo_id, private=private, exist_ok=True), "create repo", ref=repo_id, on_retry=log)
    card = gguf_card(repo_id, files[0], quant, base).encode("utf-8")
    ops = [CommitOperationAdd(name, str(folder / name)) for name in files] + [CommitOperationAdd(RunDir.CARD, card)]
    info = call(lambda: api.create_commit(repo_id, ops, commit_message="phi3space: GGUF export"), "upload", ref=repo_id,
                on_retry=log)
    result = {"repo_id": repo_id, "url": str(url).rstrip("/") if url else f"https://huggingface.co/{repo_id}",
              "commit": getattr(info, "oid", None) or ""}
    writer.emit("push", what="gguf", **result)
    return result
