"""Hardware choice, tokenizer and base model (16/32-bit for LoRA, 4-bit nf4 for QLoRA).

Phi-3 is native in transformers: never ``trust_remote_code``. The pad token is ``<unk>``, not the EOS token, so
the model still learns to emit EOS/<|end|> where padding would otherwise hide them.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from phi3space.errors import ModelError

PAD_TOKEN = "<unk>"
STOP_TOKENS = ("<|end|>", "<|endoftext|>", "<|assistant|>")  # ids 32007, 32000, 32001 in Phi-3
SUPPORTED_MODEL_TYPES = ("phi3",)


def quiet_libraries(data: bool = True) -> None:
    """Our progress lines and events replace the libraries' progress bars and warnings: called once a command is
    about to load a model (transformers is heavy to import). ``data``: datasets too (chat never imports it)."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "kernels package missing" on CPU: harmless
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    import transformers

    if data:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@dataclass
class Hardware:
    """Where a model loads and in which precision: the device, dtype and attention implementation, and the GPUs."""

    device: str  # cuda | mps | cpu
    dtype: str  # bfloat16 | float16 | float32
    attn_implementation: str
    gpu_name: str | None = None
    gpu_memory_gb: float | None = None
    gpu_count: int = 0

    @property
    def bf16(self) -> bool:
        """Train in bfloat16 (the Trainer's ``bf16`` flag)."""
        return self.dtype == "bfloat16"

    @property
    def fp16(self) -> bool:
        """Train in float16 (the Trainer's ``fp16`` flag)."""
        return self.dtype == "float16"

    def describe(self) -> str:
        """One line for the run_started event and the log: the GPUs (or device), dtype and attention."""
        if self.device == "cuda":
            return f"{self.gpu_count} x {self.gpu_name} ({self.gpu_memory_gb:.0f} GB), {self.dtype}, {self.attn_implementation}"
        return f"{self.device}, {self.dtype}, {self.attn_implementation}"


def detect_hardware(attn: str = "auto") -> Hardware:
    """bf16 + flash-attention-2 on Ampere or newer (when installed, else sdpa); fp16 before Ampere; fp32 on CPU.

    Raises:
        ModelError: nvidia-smi sees a GPU that this torch cannot use (never train on the CPU by mistake).
    """
    import os

    import torch

    from phi3space.engine.hardware import ALLOW_CPU_ENV, cuda_mismatch, gpu_count, gpus, zero_gpu

    if not torch.cuda.is_available() and not zero_gpu() and os.environ.get(ALLOW_CPU_ENV) != "1" and (seen := gpu_count()):
        found = gpus()
        raise cuda_mismatch(seen, torch.__version__, torch.version.cuda, found[0].driver if found else None)

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        ampere = torch.cuda.get_device_capability(0)[0] >= 8
        dtype = "bfloat16" if ampere else "float16"
        if attn == "auto":
            attn = "flash_attention_2" if ampere and importlib.util.find_spec("flash_attn") else "sdpa"
        return Hardware("cuda", dtype, attn, props.name, props.total_memory / 2**30, torch.cuda.device_count())
    if attn in ("auto", "flash_attention_2"):
        attn = "sdpa"
    return Hardware("cpu", "float32", attn)


def _failure(base: str, exc: Exception) -> ModelError:
    from phi3space.hub.errors import hub_error

    mapped = hub_error(exc, f"load model {base}", base, ModelError)
    if mapped is None:
        raise exc
    return mapped


def _check_folder(base: str) -> None:
    """A base given as a path must be a folder here (before the libraries mistake it for a malformed Hub ID)."""
    from phi3space.refs import is_local_ref

    if is_local_ref(base) and not Path(base).expanduser().is_dir():
        raise ModelError(f"model folder not found: {base}",
                         "Give a Hub model ID such as microsoft/Phi-3-mini-4k-instruct, or a folder holding config.json, "
                         "the weights and the tokenizer files.")


def check_base(base: str, token: str | None = None):
    """Load and check the base model's config before any weights: it must be a native Phi-3."""
    from transformers import AutoConfig

    from phi3space.hub.access import check_read_access
    from phi3space.refs import is_local_ref

    _check_folder(base)
    try:
        if not is_local_ref(base):  # the cache is shared: ask the Hub whether *this* token may read it
            check_read_access(base, "model", token)
        config = AutoConfig.from_pretrained(base, token=token)
    except Exception as exc:
        raise _failure(base, exc) from None
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelError(f"{base} is a {config.model_type!r} model; phi3space trains Phi-3 / Phi-3.5 (model_type phi3)",
                         "Use microsoft/Phi-3-mini-4k-instruct, microsoft/Phi-3-mini-128k-instruct or microsoft/Phi-3.5-mini-instruct.")
    return config


def load_tokenizer(base: str, token: str | None = None, training: bool = True):
    """``base``'s tokenizer, padding with <unk> on the right, with a Phi-3 chat template; for ``training``, one that
    trl can mask for assistant-only loss (chat leaves trl, and the datasets and pandas it imports, unloaded)."""
    from transformers import AutoTokenizer

    _check_folder(base)
    try:
        tok = AutoTokenizer.from_pretrained(base, token=token)
    except (OSError, ValueError) as exc:
        raise _failure(base, exc) from None
    if PAD_TOKEN in tok.get_vocab():
        tok.pad_token = PAD_TOKEN
    tok.padding_side = "right"
    _ensure_phi3_template(tok, training)
    return tok


def _ensure_phi3_template(tok, training: bool = True) -> None:
    """Use the Phi-3 chat template when the checkpoint has none or (for training) one trl cannot mask for
    assistant-only loss.

    Every Phi-3 / Phi-3.5 instruct checkpoint speaks the same <|user|> ... <|end|> <|assistant|> format; trl ships
    it with {% generation %} markers, which is what puts the loss on assistant turns only.
    """
    if "<|assistant|>" not in tok.get_vocab():
        raise ModelError("the tokenizer has no Phi-3 chat tokens (<|user|>, <|assistant|>, <|end|>)",
                         "Use a Phi-3 instruct checkpoint's tokenizer, e.g. microsoft/Phi-3-mini-4k-instruct.")
    if tok.chat_template and not training:
        return
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers, phi3_chat_template

    if tok.chat_template and has_generation_markers(tok.chat_template):
        return
    try:
        if tok.chat_template:
            get_training_chat_template(tok)
            return
    except ValueError:
        pass
    tok.chat_template = phi3_chat_template


def stop_token_ids(tokenizer) -> list[int]:
    """The ids of the STOP_TOKENS this tokenizer knows (a reply ends at any of them)."""
    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in STOP_TOKENS if t in vocab]


def quantization_config(hw: Hardware):
    """4-bit nf4 with double quantisation; compute in the training dtype."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=getattr(torch, hw.dtype))


def load_model(base: str, method: str, hw: Hardware, token: str | None = None, gradient_checkpointing: bool = False):
    """The base model ready for a LoRA adapter (``method`` lora) or 4-bit for QLoRA (``method`` qlora); the caller
    has run ``check_base`` first."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = dict(dtype=getattr(torch, hw.dtype), attn_implementation=hw.attn_implementation, token=token)
    if method == "qlora":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelError("QLoRA needs the bitsandbytes package", "pip install bitsandbytes, or use model.method: lora.")
        kwargs["quantization_config"] = quantization_config(hw)
        if hw.device == "cuda":
            import os

            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    try:
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    except (OSError, ValueError) as exc:
        raise _failure(base, exc) from None
    except ImportError as exc:
        raise ModelError(f"missing package to load {base}: {exc}", "Install it, or set model.attn_implementation: sdpa.") from None
    model.config.use_cache = False  # the KV cache is useless (and warns) during training
    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model


def load_for_inference(base: str, token: str | None = None, dtype: str | None = None, purpose: str = "inference"):
    """The base model for generation or merging (``purpose``: chat, evaluation, merge, export), in the hardware's
    dtype (or ``dtype``), on its device, in eval mode. On a CPU it is loaded only if it fits in the memory this
    process may use (engine.memory), in bfloat16 when float32 would not fit and ``dtype`` is not given.

    Raises:
        OutOfMemory: on a CPU, the model would not fit.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from phi3space.engine.memory import check_memory, cpu_dtype

    hw = detect_hardware()
    check_base(base, token)
    if hw.device == "cpu":
        if dtype:
            check_memory(base, dtype, purpose, token)
        else:
            dtype = cpu_dtype(base, purpose, token)
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype or hw.dtype), token=token,
                                                     attn_implementation=hw.attn_implementation)
    except (OSError, ValueError) as exc:
        raise _failure(base, exc) from None
    return model.to(hw.device).eval()


