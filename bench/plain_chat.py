"""The yardstick of bench/chat_serving.py: a plain transformers + peft chat, the way a model card shows it.

The base model with the adapter on top, TextIteratorStreamer and ``model.generate`` in a thread, one reply at a time
(a lock): what serving looks like without batching. Run alone it is the cold-start yardstick too:

    python bench/plain_chat.py BASE ADAPTER "Write a haiku about rain" [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import sys
import threading

STOP_IDS = [32000, 32001, 32007]  # <|endoftext|>, <|assistant|>, <|end|>


class PlainChat:
    def __init__(self, base: str, adapter: str):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(base)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(device)
        self.model = PeftModel.from_pretrained(model, adapter).eval()
        self.lock = threading.Lock()

    def stream(self, messages: list[dict], max_new_tokens: int = 256):
        """The reply's text as it grows, one reply at a time."""
        from transformers import TextIteratorStreamer

        inputs = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True).to(self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        with self.lock:
            thread = threading.Thread(target=self.model.generate, kwargs=dict(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=STOP_IDS,
                pad_token_id=self.tokenizer.unk_token_id, streamer=streamer))
            thread.start()
            text = ""
            for chunk in streamer:
                text += chunk
                yield text
            thread.join()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("base")
    p.add_argument("adapter")
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    a = p.parse_args()
    shown = ""
    for text in PlainChat(a.base, a.adapter).stream([{"role": "user", "content": a.prompt}], a.max_new_tokens):
        sys.stdout.write(text[len(shown):])
        sys.stdout.flush()
        shown = text
    print()
