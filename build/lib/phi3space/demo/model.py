"""A tiny random-weight Phi-3 with the real Phi-3-mini tokenizer and vocabulary, built on this machine from the files
in ``tokenizer/`` (MIT, see its LICENSE and PROVENANCE.md). The demo's base model, the tests' model and the
benchmarks' models are all built here.

``python -m phi3space.demo.model DEST`` writes the demo's model to DEST (what the app runs at start in demo mode).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

TOKENIZER = Path(__file__).resolve().parent / "tokenizer"
DEMO_SHAPE = {"hidden": 128, "layers": 2}  # the demo's model: ~8.5 M parameters, ~34 MB; learns its 32 answers by heart


def build_phi3(dest: Path, seed: int = 0, device: str = "cpu", bf16: bool = False, **shape) -> int:
    """Write a Phi-3 checkpoint folder to ``dest``: the real Phi-3-mini config with ``shape`` overrides (hidden_size,
    num_hidden_layers, ...), random weights built on ``device`` (bfloat16 with ``bf16``), the real tokenizer. Returns
    the number of parameters."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    real = json.loads((TOKENIZER / "config.json").read_text())
    for key in ("auto_map", "_name_or_path", "transformers_version", "torch_dtype"):
        real.pop(key, None)
    real.update(shape)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Phi3ForCausalLM(Phi3Config(**real))
    if bf16:
        model = model.to(torch.bfloat16)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    for source in [*TOKENIZER.glob("tokenizer*.json"), TOKENIZER / "LICENSE"]:  # the tokenizer's files, its licence
        shutil.copyfile(source, dest / source.name)
    return sum(p.numel() for p in model.parameters())


def build_tiny_phi3(dest: Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """A tiny Phi-3: hidden 64, 2 layers by default (the tests' model). Wider initial weights than the real 0.02:
    with hidden 64 and a final RMSNorm, 0.02 caps the logits so low that the loss cannot fall far even when greedy
    decoding is already exact."""
    build_phi3(Path(dest), seed, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
               num_key_value_heads=4, intermediate_size=2 * hidden, max_position_embeddings=4096,
               original_max_position_embeddings=4096, initializer_range=0.2)
    return Path(dest)


if __name__ == "__main__":
    build_tiny_phi3(Path(sys.argv[1]), seed=0, **DEMO_SHAPE)
