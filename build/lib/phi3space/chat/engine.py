"""ChatEngine: one base model loaded once, adapters attached by name (peft multi-adapter), streamed replies written
together: the replies under way share batched forward passes, each with its own adapter.

Generation stops on Phi-3's end-of-turn tokens (<|end|>, <|endoftext|>, <|assistant|>). Greedy unless a
temperature above 0 is given.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phi3space.engine.adapters import _does_not_fit, adapter_name, resolve_adapter
from phi3space.engine.modeling import load_for_inference, load_tokenizer, stop_token_ids
from phi3space.errors import ModelError, scrub
from phi3space.generation import DEFAULTS, GenerationSettings

# Limits for a shared server (the README states them). Replies are generated together, in slices: all the replies
# under way (up to MAX_BATCH, and MAX_BATCH_TOKENS of context between them) share one batched forward pass per token,
# each with its own adapter (peft's mixed-adapter batches). A slice goes on while no one else waits (one generate()
# call for a whole reply when a visitor is alone), and ends after SLICE_TOKENS tokens once someone does: a reply that
# arrives joins at the next slice, and a long reply never holds up a short one for longer than that. Each reply is
# bounded in tokens (at most generation.MAX_NEW_TOKENS) and in time.
SLICE_TOKENS = 16
MAX_SECONDS = 120.0
MAX_BATCH = 16
MAX_BATCH_TOKENS = 32768
BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


class FairLock:
    """A lock granted in the order it was asked for (threading.Lock is not fair)."""

    def __init__(self):
        self._cv = threading.Condition()
        self._queue: deque = deque()

    def waiting(self) -> bool:
        """Whether someone waits for the lock."""
        with self._cv:
            return len(self._queue) > 1

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


@dataclass(eq=False)
class _Reply:
    """One reply being written: its tokens so far (prompt first) and where they go."""

    ids: list[int]
    prompt_len: int
    adapter: str  # a peft adapter name, or BASE
    budget: int  # new tokens it may have
    deadline: float  # time.monotonic() after which it ends
    sampling: tuple  # generate()'s sampling arguments, as items: replies are batched with others of the same
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # token ids, then None (or an exception)
    done: bool = False
    gone: bool = False  # the visitor stopped reading

    @property
    def generated(self) -> int:
        return len(self.ids) - self.prompt_len

    def finish(self, error: BaseException | None = None) -> None:
        if not self.done:
            self.done = True
            self.out.put(error)


@dataclass(eq=False)
class _Batch:
    """The replies of the last slice of one sampling group, as generate() left them: ids, mask and KV cache."""

    replies: list[_Reply]
    ids: Any
    mask: Any
    cache: Any


def _ended(replies: list[_Reply], others_wait: Callable[[], bool]):
    """A generate() stopping criterion: a row is finished once its reply has ended (stop token, budget), its
    visitor has gone or its time is up; generate() stops when every row is, or (``turn_over``) after SLICE_TOKENS
    tokens when ``others_wait``."""
    import torch
    from transformers import StoppingCriteria

    class Ended(StoppingCriteria):
        tokens = 0
        turn_over = False

        def __call__(self, input_ids, scores, **kwargs):
            self.tokens += 1
            now = time.monotonic()
            for r in replies:
                if r.gone or now >= r.deadline:
                    r.finish()
            done = [r.done for r in replies]
            if self.tokens >= SLICE_TOKENS and not all(done) and others_wait():
                self.turn_over = True
                done = [True] * len(replies)
            return torch.tensor(done, device=input_ids.device)

    return Ended()


def _dispatcher(replies: list[_Reply], stop_ids: list[int]):
    """A generate() streamer for a batch: hands each new token to its reply as soon as it exists, and ends a reply at
    a stop token or at its budget (the batch goes on; its later tokens are not that reply's)."""
    from transformers.generation.streamers import BaseStreamer

    stops = set(stop_ids)

    class Dispatch(BaseStreamer):
        def put(self, value):
            if value.dim() > 1:  # the prompt (the conversations so far)
                return
            for reply, token in zip(replies, value.tolist()):
                if reply.done:
                    continue
                reply.ids.append(token)
                reply.out.put(token)
                if token in stops or reply.generated >= reply.budget:
                    reply.finish()

        def end(self):
            pass

    return Dispatch()


class ChatEngine:
    """Keeps one base model in memory, adapters attached by name, and writes every reply under way in one batch."""

    def __init__(self, base: str, token: str | None = None):
        self.base = base  # the token loads the base only: the engine is shared and keeps no one's token
        self.model = load_for_inference(base, token, purpose="chat")  # checks that it is a Phi-3 (and fits, on a CPU)
        self.tokenizer = load_tokenizer(base, token, training=False)
        self.adapters: dict[str, str] = {}  # name -> ref
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.context = getattr(self.model.config, "max_position_embeddings", 4096)
        self._model_turn = FairLock()  # attaching an adapter changes the model: never during a slice
        self._cv = threading.Condition()
        self._replies: deque[_Reply] = deque()  # under way, in turn
        self._worker: threading.Thread | None = None
        self._batches: dict[tuple, _Batch] = {}  # per sampling group, for the next slice to continue from

    def attach(self, ref: str, token: str | None = None) -> str:
        """Load an adapter (run folder, or Hub repo read with the caller's ``token``) under a name; reused after."""
        name = adapter_name(ref)
        if name in self.adapters:
            if not Path(ref).expanduser().is_dir():  # attached for someone else: this caller must be allowed too
                from phi3space.hub.access import check_read_access
                from phi3space.hub.errors import call

                call(lambda: check_read_access(ref, "model", token), f"read adapter {ref}", ModelError, ref, attempts=1)
            return name
        path = resolve_adapter(ref, token)
        from peft import PeftModel
        from safetensors import SafetensorError

        with self._model_turn():
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

    def stream(self, messages: list[dict], adapter: str | None = None,
               max_new_tokens: int = DEFAULTS.max_new_tokens, temperature: float = DEFAULTS.temperature,
               top_p: float = DEFAULTS.top_p, token: str | None = None,
               max_seconds: float = MAX_SECONDS) -> Iterator[str]:
        """Yield the reply's text as it grows (each item is the text so far). ``adapter`` None = the base model.
        The generation settings are checked as GenerationSettings (ConfigError). The reply ends at a stop token,
        after ``max_new_tokens`` (at most generation.MAX_NEW_TOKENS and what the context leaves), or after ``max_seconds``."""
        settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        name = self.attach(adapter, token) if adapter else BASE
        ids = list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])
        room = self.context - len(ids)
        if room < 1:
            raise ModelError(f"the conversation is longer than the model's context ({self.context} tokens)",
                             "Clear the chat, or shorten the system prompt and the message.")
        sampling = tuple(settings.generate_kwargs().items())
        reply = _Reply(ids, len(ids), name, min(settings.max_new_tokens, room), time.monotonic() + max_seconds, sampling)
        self._submit(reply)
        tokens: list[int] = []
        text, ended = "", False
        prefix = read = 0  # decoded from tokens[prefix:]: a few tokens of context, then what is new (O(1) a token)
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        try:
            while not ended:
                items = [reply.out.get()]
                while not reply.out.empty():  # decode what has arrived together, not each token on its own
                    items.append(reply.out.get_nowait())
                for item in items:
                    if isinstance(item, BaseException):
                        raise item
                    if item is None:
                        ended = True
                    else:
                        tokens.append(item)
                before, now = decode(tokens[prefix:read]), decode(tokens[prefix:])
                if len(now) > len(before) and not now.endswith("\ufffd"):  # not half of a character
                    text += now[len(before):]
                    prefix, read = read, len(tokens)
                    yield text
            whole = decode(tokens)
            if whole != text:  # what a piecewise decoding cannot show (bytes that are no character)
                yield whole
        finally:
            reply.gone = True  # a visitor who stops reading frees the place at the next slice

    def reply(self, messages: list[dict], adapter: str | None = None, **kw) -> str:
        """The whole reply at once (``stream``'s last text, stripped): the same arguments and errors as ``stream``."""
        last = ""
        for text in self.stream(messages, adapter, **kw):  # each item is the whole reply so far
            last = text
        return last.strip()

    # ------------------------------------------------------------ the batches

    def _submit(self, reply: _Reply) -> None:
        with self._cv:
            self._replies.append(reply)
            if self._worker is None:  # not a daemon: a process that exits lets the slice under way end (one step)
                self._worker = threading.Thread(target=self._serve, name="chat-batches")
                self._worker.start()

    def _serve(self) -> None:
        """Write every reply under way, a slice at a time, until none is left."""
        while True:
            with self._cv:
                for r in self._replies:
                    if r.gone and not r.done:
                        r.finish()
                live = [r for r in self._replies if not r.done]
                if not live:
                    self._replies.clear()
                    self._batches.clear()
                    self._worker = None
                    return
                taken, tokens = [], 0
                for r in live:  # in turn: who was served last goes to the back
                    if taken and (len(taken) >= MAX_BATCH or tokens + len(r.ids) + SLICE_TOKENS > MAX_BATCH_TOKENS):
                        break
                    taken.append(r)
                    tokens += len(r.ids) + SLICE_TOKENS
                self._replies = deque([r for r in live if r not in taken] + taken)
            groups: dict[tuple, list[_Reply]] = {}
            for r in taken:
                groups.setdefault(r.sampling, []).append(r)
            for sampling, replies in groups.items():
                self._slice(sampling, replies)
            for key in [k for k in self._batches if k not in groups]:
                del self._batches[key]

    def _slice(self, sampling: tuple, replies: list[_Reply]) -> None:
        """More tokens for each of ``replies`` (same sampling), in one batched generate(): up to their budgets, or a
        slice of SLICE_TOKENS when others wait."""
        now = time.monotonic()
        for r in replies:
            if now >= r.deadline:
                r.finish()
        replies = [r for r in replies if not r.done]
        if not replies:
            return
        try:
            self._generate(sampling, replies)
        except BaseException as exc:  # re-raised in each reader's thread
            self._batches.pop(sampling, None)
            for r in replies:
                r.finish(exc)

    def _generate(self, sampling: tuple, replies: list[_Reply]) -> None:
        import torch
        from peft import PeftModel
        from transformers import DynamicCache

        last = self._batches.get(sampling)
        if last is not None and all(r in last.replies for r in replies):
            # The same replies as last time, or some of them: continue from the cache (dropping the rows that ended).
            rows = [i for i, r in enumerate(last.replies) if r in replies]
            replies = [last.replies[i] for i in rows]
            ids, mask, cache = last.ids, last.mask, last.cache
            if len(rows) < len(last.replies):
                index = torch.tensor(rows, device=ids.device)
                ids, mask = ids[index], mask[index]
                cache.batch_select_indices(index)
        else:  # someone joined: start the batch again from the conversations so far (left-padded)
            width = max(len(r.ids) for r in replies)
            pad = self.tokenizer.pad_token_id
            ids = torch.tensor([[pad] * (width - len(r.ids)) + r.ids for r in replies], device=self.model.device)
            mask = torch.tensor([[0] * (width - len(r.ids)) + [1] * len(r.ids) for r in replies], device=self.model.device)
            cache = DynamicCache()
        ended = _ended(replies, lambda: self._model_turn.waiting() or self._others_wait(replies))
        args = dict(input_ids=ids, attention_mask=mask, past_key_values=cache,
                    max_new_tokens=max(r.budget - r.generated for r in replies),
                    eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id,
                    streamer=_dispatcher(replies, self.stop_ids), stopping_criteria=[ended], **dict(sampling))
        with self._model_turn(), torch.inference_mode():
            if isinstance(self.model, PeftModel):
                args["adapter_names"] = [r.adapter for r in replies]
            out = self.model.generate(**args)
        grown = out.shape[1] - ids.shape[1]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], grown)], dim=1)
        self._batches[sampling] = _Batch(replies, out, mask, cache)
        for r in replies:
            if not ended.turn_over or r.generated >= r.budget:  # generate() stopped with every row ended
                r.finish()

    def _others_wait(self, batch: list[_Reply]) -> bool:
        """Whether a reply not in ``batch`` waits for its turn."""
        with self._cv:
            return any(not r.done and r not in batch for r in self._replies)


