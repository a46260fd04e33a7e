"""The tests' tiny random-weight Phi-3 (hidden 64, 2 layers) with the real Phi-3-mini tokenizer: built by the app's
own builder (phi3space.demo.model, which the demo's base model comes from too); FIXTURE is the tests' copy of the
tokenizer and architecture files."""

from __future__ import annotations

from pathlib import Path

from phi3space.demo.model import build_phi3, build_tiny_phi3  # noqa: F401  (re-exported for the tests and bench/)

FIXTURE = Path(__file__).parent / "fixtures" / "phi3-mini-4k-instruct"
