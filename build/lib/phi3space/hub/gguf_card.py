"""A GGUF export's repo: its card (how to run it with Ollama and llama.cpp) and the upload of the GGUF file, the
Modelfile and the card in one commit."""

from __future__ import annotations

from pathlib import Path

from phi3space.refs import is_hub_id
from phi3space.run import EventWriter, RunDir


def run_commands(gguf_file: str, repo: str | None = None) -> list[str]:
    """The lines that run an exported file: from its Hub repo (a repo ID or its URL) by the file's quant tag
    (``<name>-<QUANT>.gguf``: llama.cpp's -hf and Ollama's hf.co/ pick a file by it) when it was pushed, else from
    the file itself."""
    if repo:
        repo_id = "/".join(repo.rstrip("/").split("/")[-2:])
        tag = Path(gguf_file).stem.rsplit("-", 1)[-1]
        return [f"llama-cli -hf {repo_id}:{tag}", f"llama-server -hf {repo_id}:{tag}", f"ollama run hf.co/{repo_id}:{tag}"]
    return [f"llama-cli -m {gguf_file}", f"llama-server -m {gguf_file}",
            "ollama create NAME -f Modelfile  (in the folder of the file and its Modelfile)"]


def gguf_card(repo_id: str, gguf_file: str, quant: str, base: str | None) -> str:
    """The card: front matter the Hub indexes (gguf, base model) and the lines that run the file."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(base_model=base if base and is_hub_id(base) else None, library_name="gguf",
                         pipeline_tag="text-generation", tags=["gguf", "phi3", "phi3space", "ollama", "llama.cpp"])
    tag = quant.upper()
    name = repo_id.split("/")[-1].lower()
    cli, server, ollama = run_commands(gguf_file, repo_id)
    body = f"""
# {repo_id.split('/')[-1]}

A Phi-3 fine-tune exported by phi3space: the LoRA adapter merged into its 16-bit base{f' ({base})' if base else ''}
and written as GGUF ({tag}). The file carries the base's own chat template, `<|end|>` as its end-of-generation token
and no BOS before a prompt, so llama.cpp and Ollama prompt it as it was trained.

## Run it

llama.cpp (downloads the file, then chats or serves an OpenAI-compatible API on port 8080):

```sh
{cli}
{server}
```

Ollama (it reads the chat template inside the GGUF and turns it into its own; for a private repo, add your Ollama
SSH key to your Hugging Face account first):

```sh
{ollama}
```

Or download the file with this repo's `Modelfile` (the same template written for Ollama, the stop tokens, and the
system prompt and temperature when the export set them) and create a local Ollama model from it:

```sh
hf download {repo_id} {gguf_file} Modelfile --local-dir {name}
cd {name} && ollama create {name} -f Modelfile && ollama run {name}
```

Smaller files (Q4_K_M and the other k-quants) come from llama.cpp's quantizer, best from an F16 export:
`llama-quantize {gguf_file} {name}-Q4_K_M.gguf Q4_K_M`.
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
