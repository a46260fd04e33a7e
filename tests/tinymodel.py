"""A tiny random-weight Phi-3 with the real Phi-3-mini tokenizer and vocabulary (hidden 64, 2 layers)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "phi3-mini-4k-instruct"


def build_tiny_phi3(dest: Path, seed: int = 0, hidden: int = 64) -> Path:
    """Write a Phi-3 checkpoint folder (config, random weights, real tokenizer) to ``dest``."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    real = json.loads((FIXTURE / "config.json").read_text())
    for key in ("auto_map", "_name_or_path", "transformers_version", "torch_dtype"):
        real.pop(key, None)
    real.update(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                intermediate_size=2 * hidden, max_position_embeddings=4096, original_max_position_embeddings=4096,
                # Wider initial weights than the real 0.02: with hidden 64 and a final RMSNorm, 0.02 caps the logits
                # so low that the loss cannot fall far even when greedy decoding is already exact.
                initializer_range=0.2)
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(Phi3Config(**real))
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(FIXTURE / name, dest / name)
    return dest
