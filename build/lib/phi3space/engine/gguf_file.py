"""Write a Phi-3 model as one GGUF file (f16, bf16 or q8_0) with the ``gguf`` package's writer, in pure Python (no
llama.cpp to compile), a tensor at a time: the file's header and tensor table go first, then each tensor is produced,
converted a block of rows at a time and written, so the float32 copy of the whole model never exists.

What llama.cpp's own converter writes for Phi-3 (convert_hf_to_gguf.py, ``Phi3MiniModel``), and why each matters to a
real llama.cpp (checked there, tests/test_llama_cpp.py):

- **The vocabulary as SentencePiece would give it.** llama.cpp's tokenizer for this vocabulary (``llama``, SPM) merges
  the adjacent pair whose merged token has the highest score. The converter takes the scores from ``tokenizer.model``;
  a folder saved by transformers 5 has only ``tokenizer.json``, whose BPE merges were made from those scores in the
  same order. So a token's score here is minus the rank of the first merge that makes it: the same merge order,
  hence the same tokens as transformers. Added tokens are CONTROL when special (USER_DEFINED otherwise), bytes BYTE.
- **The name.** llama.cpp strips the whitespace after Phi-3's special tokens (as transformers' ``rstrip`` does) only
  when the file's ``general.name`` contains "phi-3" or "phi3" (llama-vocab.cpp); the name always does.
- **No BOS where training had none**: ``add_bos_token`` is written as the tokenizer behaves (false for Phi-3), else
  llama.cpp puts ``<s>`` before every prompt.
- **The base's own chat template** (without trl's ``{% generation %}`` markers), which llama.cpp's template engine
  and Ollama recognise as Phi-3's; ``<|end|>`` is both EOS and EOT, so generation ends with the assistant's turn.

k-quants (Q4_K_M, ...) need llama.cpp's C++ quantizer (``llama-quantize`` on the f16 file).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from phi3space.errors import ModelError

QUANTS = ("f16", "bf16", "q8_0")
END = "<|end|>"
_GENERATION_TAGS = re.compile(r"{%-?\s*(end)?generation\s*-?%}")
_BYTE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
# Tokens llama.cpp makes control tokens at load whatever the file says ("control-looking token ... will be overridden")
_CONTROL_LOOKING = ("</s>", END)
_ROWS_AT_ONCE = 1 << 22  # values converted at a time: 16 MB as float32


def gguf_file_name(name: str, quant: str) -> str:
    """The file's name: ``<name>-<QUANT>.gguf``, the tag that ``llama-cli -hf REPO:Q8_0`` and ``ollama run
    hf.co/REPO:Q8_0`` pick a file of a repo by."""
    return f"{name}-{quant.upper()}.gguf"


def strip_generation_tags(template: str) -> str:
    """A chat template without trl's ``{% generation %}`` markers (a training-only extension)."""
    return _GENERATION_TAGS.sub("", template)


@dataclass
class Vocab:
    """The tokenizer as GGUF's ``llama`` (SentencePiece) vocabulary holds it."""

    tokens: list[bytes]
    scores: list[float]
    types: list[int]
    bos: int | None
    eos: int
    unk: int | None
    pad: int | None
    add_bos: bool
    add_eos: bool
    chat_template: str


def read_vocab(tokenizer, vocab_size: int) -> Vocab:
    """The vocabulary of a transformers tokenizer (a Phi-3 / Phi-3.5 Mini one), padded to the model's ``vocab_size``.

    Raises:
        ModelError: not a SentencePiece-style BPE tokenizer (Phi-4's GPT-2 style one, say).
    """
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise ModelError("export writes SentencePiece-style vocabularies (Phi-3 and Phi-3.5 Mini); this tokenizer is "
                         f"a {model.get('type')} one without byte fallback",
                         "Export a Phi-3 or Phi-3.5 Mini fine-tune, or convert this one with llama.cpp's converter.")
    merges = model.get("merges") or []
    first_merge: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        first_merge.setdefault(left + right, rank)
    t = gguf.TokenType
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]  # rows of the embedding no token uses (32064 > 32011)
    scores, types = [-10000.0] * vocab_size, [t.UNUSED] * vocab_size
    for text, i in model["vocab"].items():
        tokens[i] = text.encode("utf-8")
        if _BYTE.fullmatch(text):
            scores[i], types[i] = 0.0, t.BYTE
        else:  # single characters are never merged into: their score is never read
            scores[i], types[i] = -float(first_merge.get(text, len(merges))), t.NORMAL
    for added in spec.get("added_tokens") or []:
        i, text = added["id"], added["content"]
        tokens[i], scores[i] = text.encode("utf-8"), -1000.0
        types[i] = t.CONTROL if added.get("special") or text in _CONTROL_LOOKING else t.USER_DEFINED
    ids = tokenizer("a")["input_ids"]
    return Vocab(tokens, scores, types, tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids(END),
                 tokenizer.unk_token_id, tokenizer.pad_token_id,
                 add_bos=bool(ids) and ids[0] == tokenizer.bos_token_id,
                 add_eos=bool(ids) and ids[-1] == tokenizer.eos_token_id,
                 chat_template=strip_generation_tags(tokenizer.chat_template or ""))


def phi3_name(name: str) -> str:
    """``general.name``: llama.cpp applies Phi-3's tokenizer rules only to a file whose name says phi-3 or phi3."""
    return name if re.search(r"phi-?3", name.lower()) else f"Phi-3 {name}"


def _tensor_type(gguf, quant: str, name: str, shape: tuple):
    """What a tensor is stored as: norms and rope factors in F32 (as llama.cpp does); matrices in the chosen type
    (q8_0 needs rows of whole 32-value blocks, else F16)."""
    t = gguf.GGMLQuantizationType
    if len(shape) < 2 or name.startswith("rope_factors"):
        return t.F32
    if quant == "q8_0":
        return t.Q8_0 if shape[-1] % gguf.GGML_QUANT_SIZES[t.Q8_0][0] == 0 else t.F16
    return {"f16": t.F16, "bf16": t.BF16}[quant]


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


def _add_vocab(writer, vocab: Vocab) -> None:
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    for add, token_id in ((writer.add_bos_token_id, vocab.bos), (writer.add_unk_token_id, vocab.unk),
                          (writer.add_pad_token_id, vocab.pad)):
        if token_id is not None:
            add(token_id)
    writer.add_eos_token_id(vocab.eos)  # the end of an assistant turn ends generation
    writer.add_eot_token_id(vocab.eos)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


class _Rows:
    """One tensor as the writer wants it (``nbytes``, ``tofile``), converted and written a block of rows at a time."""

    def __init__(self, gguf, tensor, kind, nbytes: int):
        self.gguf, self.tensor, self.kind, self.nbytes = gguf, tensor, kind, nbytes

    def tofile(self, fh) -> None:
        import numpy as np

        t = self.gguf.GGMLQuantizationType
        rows = self.tensor.reshape(-1, self.tensor.shape[-1]) if self.tensor.dim() > 1 else self.tensor.reshape(1, -1)
        step = max(1, _ROWS_AT_ONCE // rows.shape[1])
        for start in range(0, rows.shape[0], step):
            block = rows[start:start + step].float().cpu().numpy()
            if self.kind == t.F32:
                out = block
            elif self.kind == t.F16:
                out = block.astype(np.float16)
            else:
                out = self.gguf.quants.quantize(block, self.kind)
            out.tofile(fh)


# A tensor to write: its Hugging Face name, its shape, and what makes its values (called once, when it is written).
Tensor = tuple[str, tuple[int, ...], Callable[[], object]]


def write_gguf(out_file: str | Path, cfg: dict, vocab: Vocab, tensors: Iterable[Tensor], quant: str, name: str,
               on_tensor: Callable[[int, int], None] | None = None) -> Path:
    """Write a Phi-3 model (its ``config.json`` as ``cfg``, ``vocab``, ``tensors``) as ``out_file`` in ``quant``
    (one of QUANTS). Each tensor's values are asked for as it is written; ``on_tensor(i, n)`` hears each one."""
    import gguf
    import numpy as np
    import torch

    arch = gguf.MODEL_ARCH.PHI3
    writer = gguf.GGUFWriter(Path(out_file), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(phi3_name(name))
    writer.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant])
    rope = [(n, (len(v),), lambda v=v: torch.tensor(v, dtype=torch.float32)) for n, v in _hparams(writer, cfg)]
    _add_vocab(writer, vocab)
    names = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    planned = []
    for hf_name, shape, make in rope + list(tensors):
        gguf_name = hf_name if hf_name.startswith("rope_factors") else names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ModelError(f"export: no GGUF name for the tensor {hf_name}", "Export a Phi-3 or Phi-3.5 Mini fine-tune.")
        kind = _tensor_type(gguf, quant, gguf_name, shape)
        nbytes = int(np.prod(gguf.quants.quant_shape_to_byte_shape(shape, kind)))
        writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), nbytes, raw_dtype=kind)
        planned.append((make, kind, nbytes))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for i, (make, kind, nbytes) in enumerate(planned, 1):
        writer.write_tensor_data(_Rows(gguf, make(), kind, nbytes))
        if on_tensor:
            on_tensor(i, len(planned))
    writer.close()
    return Path(out_file)
