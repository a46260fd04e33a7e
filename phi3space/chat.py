"""ChatEngine: one base model loaded once, adapters attached by name (peft multi-adapter), streamed replies.

Generation stops on Phi-3's end-of-turn tokens (<|end|>, <|endoftext|>, <|assistant|>). Greedy unless a
temperature above 0 is given.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError, ModelError, scrub
from .modeling import load_for_inference, load_tokenizer, stop_token_ids
from .run import RunDir


def resolve_adapter(ref: str, token: str | None = None) -> Path:
    """A local run folder, or a Hub adapter repo downloaded to the cache (after asking the Hub whether ``token``
    may read it: the cache is shared)."""
    from .hub import call, check_read_access, is_local_ref

    if is_local_ref(ref):
        path = Path(ref).expanduser()
        if not path.is_dir():
            raise ModelError(f"adapter not found: {ref}", "Give a run folder (runs/NAME) or a Hub repo ID (user/name).")
        if not RunDir(path).adapter_config.exists():
            raise ModelError(f"{ref} holds no adapter (no {RunDir.ADAPTER_CONFIG})",
                             "Point at the folder of a finished run (it holds the adapter's weights and config).")
        return path
    from huggingface_hub import snapshot_download

    def download() -> Path:
        check_read_access(ref, "model", token)
        return Path(snapshot_download(ref, token=token, allow_patterns=["adapter_*", "tokenizer*", "*.jinja", RunDir.CONFIG]))

    return call(download, f"download adapter {ref}", ModelError, ref)


def _does_not_fit(ref: str, base: str, path: Path, exc: Exception) -> ModelError:
    return ModelError(f"adapter {ref} does not fit base model {base}: {scrub(str(exc)).splitlines()[0][:200]}",
                      f"Use the base it was trained on ({adapter_base(path)}) with --base.")


def adapter_base(adapter_dir: Path) -> str:
    return RunDir(adapter_dir).adapter_base()


def adapter_name(ref: str) -> str:
    """A peft adapter name for ``ref``: readable, and distinct for distinct refs."""
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', ref)[-40:]}_{hashlib.sha1(ref.encode()).hexdigest()[:8]}"


# Limits for a shared server (the README states them). A reply is generated in slices of SLICE_TOKENS tokens; the
# engine serves the slices of all waiting replies in turn, so a long reply never holds up a short one for longer
# than a slice, and each reply is bounded in tokens and in time.
SLICE_TOKENS = 16
MAX_NEW_TOKENS = 1024
MAX_SECONDS = 120.0


def check_generation(max_new_tokens: int, temperature: float, top_p: float) -> None:
    """Generation settings a person can get wrong.

    Raises:
        ConfigError: naming each bad setting and its range.
    """
    import math

    problems = []
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        problems.append(f"max_new_tokens: {max_new_tokens!r} must be at least 1 (at most {MAX_NEW_TOKENS})")
    if not math.isfinite(temperature) or temperature < 0 or temperature > 5:
        problems.append(f"temperature: {temperature!r} must be in [0, 5] (0 = greedy)")
    if not math.isfinite(top_p) or not 0 < top_p <= 1:
        problems.append(f"top_p: {top_p!r} must be in (0, 1]")
    if problems:
        raise ConfigError(problems, "Use e.g. max_new_tokens 256, temperature 0 (greedy) or 0.7, top_p 1.")


class FairLock:
    """A lock granted in the order it was asked for (threading.Lock is not fair)."""

    def __init__(self):
        self._cv = threading.Condition()
        self._queue: deque = deque()

    @contextmanager
    def __call__(self):
        ticket = object()
        with self._cv:
            self._queue.append(ticket)
            self._cv.wait_for(lambda: self._queue[0] is ticket)
        try:
            yield
        finally:
            with self._cv:
                self._queue.popleft()
                self._cv.notify_all()


def _slice_streamer(tokenizer):
    """transformers' TextIteratorStreamer for a reply generated in several calls: each call's prompt (the
    conversation so far) is skipped, and only ``finish()`` ends the stream."""
    from transformers import TextIteratorStreamer

    class SliceStreamer(TextIteratorStreamer):
        def start_slice(self) -> None:
            self.next_tokens_are_prompt = True

        def end(self) -> None:  # called by generate() after each slice: the reply goes on
            pass

        def finish(self) -> None:
            super().end()

    return SliceStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


class ChatEngine:
    """Keeps one base model in memory and switches between named adapters, a slice of a reply at a time."""

    def __init__(self, base: str, token: str | None = None):
        self.base = base  # the token loads the base only: the engine is shared and keeps no one's token
        self.model = load_for_inference(base, token)  # checks first that the base is a Phi-3
        self.tokenizer = load_tokenizer(base, token)
        self.adapters: dict[str, str] = {}  # name -> ref
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.context = getattr(self.model.config, "max_position_embeddings", 4096)
        self._turn = FairLock()  # the active adapter is model-wide state: one slice at a time, in turn

    def attach(self, ref: str, token: str | None = None) -> str:
        """Load an adapter (run folder, or Hub repo read with the caller's ``token``) under a name; reused after."""
        name = adapter_name(ref)
        if name in self.adapters:
            if not Path(ref).expanduser().is_dir():  # attached for someone else: this caller must be allowed too
                from .hub import call, check_read_access

                call(lambda: check_read_access(ref, "model", token), f"read adapter {ref}", ModelError, ref, attempts=1)
            return name
        path = resolve_adapter(ref, token)
        from peft import PeftModel
        from safetensors import SafetensorError

        with self._turn():
            try:
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(str(path), adapter_name=name)
                else:
                    self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name).eval()
            except SafetensorError as exc:
                raise ModelError(f"the adapter weights in {ref} are damaged ({scrub(str(exc))[:120]})",
                                 "Push or copy the adapter again, or resume its run to save it anew.") from None
            except (RuntimeError, ValueError, KeyError) as exc:
                raise _does_not_fit(ref, self.base, path, exc) from None
        self.adapters[name] = ref
        return name

    def stream(self, messages: list[dict], adapter: str | None = None, max_new_tokens: int = 256,
               temperature: float = 0.0, top_p: float = 1.0, token: str | None = None,
               max_seconds: float = MAX_SECONDS) -> Iterator[str]:
        """Yield the reply's text as it grows (each item is the text so far). ``adapter`` None = the base model.
        The reply ends at a stop token, after ``max_new_tokens`` (at most MAX_NEW_TOKENS and what the context
        leaves), or after ``max_seconds``."""
        check_generation(max_new_tokens, temperature, top_p)
        name = self.attach(adapter, token) if adapter else None
        inputs = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True).to(self.model.device)
        room = self.context - inputs["input_ids"].shape[1]
        if room < 1:
            raise ModelError(f"the conversation is longer than the model's context ({self.context} tokens)",
                             "Clear the chat, or shorten the system prompt and the message.")
        budget = min(max_new_tokens, MAX_NEW_TOKENS, room)
        streamer = _slice_streamer(self.tokenizer)
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
        errors: list[BaseException] = []

        def run():
            try:
                self._generate(name, inputs, budget, time.monotonic() + max_seconds, streamer, sampling)
            except BaseException as exc:  # re-raised in the caller's thread below
                errors.append(exc)
            finally:
                streamer.finish()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        text = ""
        for chunk in streamer:
            text += chunk
            yield text
        thread.join()
        if errors:
            raise errors[0]

    def _generate(self, name: str | None, inputs, budget: int, deadline: float, streamer, sampling: dict) -> None:
        """Generate up to ``budget`` tokens, SLICE_TOKENS per turn, reusing the KV cache between slices."""
        import torch
        from peft import PeftModel
        from transformers import DynamicCache

        ids, cache, done = inputs["input_ids"], DynamicCache(), 0
        while done < budget and time.monotonic() < deadline:
            n = min(SLICE_TOKENS, budget - done)
            streamer.start_slice()
            with self._turn(), torch.inference_mode():
                args = dict(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache, max_new_tokens=n,
                            eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id, streamer=streamer,
                            **sampling)
                if isinstance(self.model, PeftModel) and name is None:
                    with self.model.disable_adapter():
                        out = self.model.generate(**args)
                else:
                    if isinstance(self.model, PeftModel):
                        self.model.set_adapter(name)
                    out = self.model.generate(**args)
            new = out.shape[1] - ids.shape[1]
            ids, done = out, done + new
            if new < n or int(out[0, -1]) in self.stop_ids:
                return

    def reply(self, messages: list[dict], adapter: str | None = None, **kw) -> str:
        *_, text = self.stream(messages, adapter, **kw)  # each item is the whole reply so far
        return text.strip()


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
    model = load_for_inference(base, token)
    stage("merging the adapter into the base weights")
    try:
        merged = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as exc:
        raise _does_not_fit(adapter, base, path, exc) from None
    out = Path(out_dir)
    stage(f"saving the merged model to {out}")
    merged.save_pretrained(out)
    tokenizer_source = path if RunDir(path).has_tokenizer() else base
    load_tokenizer(str(tokenizer_source), token).save_pretrained(out)
    return out
