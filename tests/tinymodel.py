"""A tiny random-weight Phi-3 with the real Phi-3-mini tokenizer and vocabulary (hidden 64, 2 layers)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "phi3-mini-4k-instruct"


def build_phi3(dest: Path, seed: int = 0, device: str = "cpu", bf16: bool = False, **shape) -> int:
    """Write a Phi-3 checkpoint folder to ``dest``: the real Phi-3-mini config with ``shape`` overrides (hidden_size,
    num_hidden_layers, ...), random weights built on ``device`` (bfloat16 with ``bf16``), the real tokenizer. Returns
    the number of parameters. The tests' tiny model and the benchmarks' models (bench/) are all built here."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    real = json.loads((FIXTURE / "config.json").read_text())
    for key in ("auto_map", "_name_or_path", "transformers_version", "torch_dtype"):
        real.pop(key, None)
    real.update(shape)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Phi3ForCausalLM(Phi3Config(**real))
    if bf16:
        model = model.to(torch.bfloat16)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(FIXTURE / name, dest / name)
    return sum(p.numel() for p in model.parameters())


def build_tiny_phi3(dest: Path, seed: int = 0, hidden: int = 64) -> Path:
    """The tests' model: hidden 64, 2 layers. Wider initial weights than the real 0.02: with hidden 64 and a final
    RMSNorm, 0.02 caps the logits so low that the loss cannot fall far even when greedy decoding is already exact."""
    build_phi3(dest, seed, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
               intermediate_size=2 * hidden, max_position_embeddings=4096, original_max_position_embeddings=4096,
               initializer_range=0.2)
    return dest
