"""Jobs: a kind (train, merge) run on a backend (this machine, Hugging Face Jobs), queued and followed."""
