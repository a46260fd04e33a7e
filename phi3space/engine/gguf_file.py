"""Write a merged Phi-3 model folder as one GGUF file (f16, bf16 or q8_0) with the ``gguf`` package's writer, in
pure Python: no llama.cpp to compile or install.

What llama.cpp's own converter (convert_hf_to_gguf.py, Phi3MiniModel) writes, taken from the same package: the
tensor names from gguf's PHI3 tensor-name map, the Phi-3 hyperparameters (context, rope, sliding window; the
long/short rope factors of the 128k models), the Llama (SentencePiece-style) vocabulary padded to the model's
vocabulary size, and the chat template. ``<|end|>`` is the end-of-generation token (``eos`` and ``eot``), so any
GGUF runner stops at the end of the assistant's turn.

The vocabulary is read from ``tokenizer.json`` with gguf's ``LlamaHfVocab`` (the same tokens, scores and types
llama.cpp's converter reads from ``tokenizer.model``; a folder saved by transformers 5 carries only
``tokenizer.json``). Only these three types are written: k-quants (Q4_K_M, ...) need llama.cpp's C++ quantizer
(``llama-quantize`` on the f16 file).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

QUANTS = ("f16", "bf16", "q8_0")
END = "<|end|>"
_GENERATION_TAGS = re.compile(r"{%-?\s*(end)?generation\s*-?%}")


def chat_template(model_dir: Path) -> str:
    """The folder's chat template, without trl's ``{% generation %}`` markers (a training-only extension)."""
    from transformers import AutoTokenizer

    template = AutoTokenizer.from_pretrained(model_dir).chat_template
    return _GENERATION_TAGS.sub("", template)


def _tensor_type(gguf, quant: str, name: str, shape: tuple):
    """What a tensor is stored as: norms and rope factors in F32 (as llama.cpp does); matrices in the chosen type
    (q8_0 needs rows of whole 32-value blocks, else F16)."""
    t = gguf.GGMLQuantizationType
    if len(shape) < 2 or name.startswith("rope_factors"):
        return t.F32
    if quant == "q8_0":
        return t.Q8_0 if shape[-1] % gguf.GGML_QUANT_SIZES[t.Q8_0][0] == 0 else t.F16
    return {"f16": t.F16, "bf16": t.BF16}[quant]


def _tensors(model_dir: Path):
    """(name, float32 numpy array) of every weight in the folder's safetensors files."""
    from safetensors import safe_open

    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():
                yield name, fh.get_tensor(name).float().numpy()


def _hparams(writer, cfg: dict) -> list[tuple[str, list[float]]]:
    """Phi-3's hyperparameters as llama.cpp's converter writes them; returns the rope factor tensors to add."""
    n_embd, n_head = cfg["hidden_size"], cfg["num_attention_heads"]
    rope = cfg.get("rope_parameters") or {}
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_rope_scaling_orig_ctx_len(cfg.get("original_max_position_embeddings") or cfg["max_position_embeddings"])
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(cfg.get("num_key_value_heads") or n_head)
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_dimension_count(int(cfg.get("partial_rotary_factor", 1.0) * n_embd // n_head))
    writer.add_rope_freq_base(float(cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0))
    writer.add_sliding_window(cfg.get("sliding_window") or 0)
    scaling = cfg.get("rope_scaling") or (rope if rope.get("long_factor") else None)
    if not scaling or not scaling.get("long_factor"):
        return []
    scale = cfg["max_position_embeddings"] / cfg["original_max_position_embeddings"]
    orig = cfg["original_max_position_embeddings"]
    writer.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1 else 1.0)
    return [("rope_factors_long.weight", scaling["long_factor"]), ("rope_factors_short.weight", scaling["short_factor"])]


def _vocab(gguf, writer, model_dir: Path, vocab_size: int) -> None:
    vocab = gguf.LlamaHfVocab(model_dir)
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    for i in range(len(tokens), vocab_size):  # the embedding has rows no token uses (32064 for 32011 in Phi-3)
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=False, n_vocab=len(tokens))
    end = vocab.tokenizer.convert_tokens_to_ids(END)
    special.special_token_ids["eos"] = end  # the end of an assistant turn ends generation
    special.chat_template = chat_template(model_dir)
    special.add_to_gguf(writer, quiet=True)
    writer.add_eot_token_id(end)


def write_gguf(model_dir: str | Path, out_file: str | Path, quant: str, name: str | None = None,
               on_tensor: Callable[[int, int], None] | None = None) -> Path:
    """Write the merged model in ``model_dir`` as ``out_file`` in ``quant`` (one of QUANTS); ``on_tensor(i, n)``
    hears each tensor written."""
    import gguf
    import numpy as np

    model_dir, out_file = Path(model_dir), Path(out_file)
    cfg = json.loads((model_dir / "config.json").read_text())
    arch = gguf.MODEL_ARCH.PHI3
    writer = gguf.GGUFWriter(out_file, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(name or model_dir.name)
    writer.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant])
    rope_factors = _hparams(writer, cfg)
    _vocab(gguf, writer, model_dir, cfg["vocab_size"])
    names = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    tensors = [(n, np.asarray(v, dtype=np.float32)) for n, v in rope_factors]
    tensors += [(names.get_name(n, try_suffixes=(".weight", ".bias")), v) for n, v in _tensors(model_dir)]
    for i, (gguf_name, data) in enumerate(tensors, 1):
        if gguf_name is None:
            raise ValueError(f"no GGUF name for a tensor of {model_dir}")
        kind = _tensor_type(gguf, quant, gguf_name, data.shape)
        if kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gguf_name, data)
        elif kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(gguf_name, data.astype(np.float16))
        else:
            writer.add_tensor(gguf_name, gguf.quants.quantize(data, kind), raw_dtype=kind)
        if on_tensor:
            on_tensor(i, len(tensors))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_file
