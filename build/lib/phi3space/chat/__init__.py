"""Chat: one base model loaded once, adapters by name, batched streamed replies."""
