"""The demo that the page opens with on a machine without a CUDA GPU: a tiny Phi-3 built here from the vendored
Phi-3 tokenizer (random weights, a few million parameters) and a small chat dataset shipped with the app (``vellmora/``:
questions and answers about Vellmora, an island made up for it; MIT like the project), with settings under which
it learns those answers by heart in a few minutes on a CPU. Chat then answers the demo's questions with them,
evaluation on its ``test`` split (questions it trained on) shows the adapter beating its base, and export works.

On a machine with a GPU, or on a Space, the page starts from Phi-3-mini as the CLI does (RunConfig's defaults);
``PHI3SPACE_DEMO=1`` or ``0`` forces either.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATASET = HERE / "vellmora"  # train.jsonl (32 chats) and test.jsonl (8 of them again), MIT
MODEL_FOLDER = "phi3-tiny-demo"  # under the data folder's demo/ folder

# The form's starting values in demo mode (section.key -> value); the model and the dataset are added by settings().
SETTINGS = {
    "data.eval_split": "test",
    "lora.r": 16, "lora.alpha": 32, "lora.dropout": 0.0,
    "training.learning_rate": 5e-3, "training.lr_scheduler": "constant", "training.warmup_ratio": 0.0,
    "training.epochs": 40.0, "training.batch_size": 8, "training.grad_accum": 1, "training.max_length": 128,
    "training.logging_steps": 5, "training.save_steps": 40, "training.eval_steps": 20,
}
ENV = "PHI3SPACE_DEMO"


def wanted(space: bool, gpus: int) -> bool:
    """Whether the page opens with the demo: ``PHI3SPACE_DEMO`` when set (1 or 0), else off a Space on a machine
    without a CUDA GPU."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    return not space and gpus == 0


def model_path(root: Path) -> Path:
    """Where the demo's base model lives under the data folder ``root``."""
    return Path(root) / "demo" / MODEL_FOLDER


def settings(root: Path) -> dict:
    """The form's starting values in demo mode: the tiny model, the shipped dataset and SETTINGS."""
    return {"model.base": str(model_path(root)), "data.dataset": str(DATASET), **SETTINGS}


def prepare(root: Path) -> Path:
    """The demo's base model under ``root``, built once in a subprocess (the web server does not import torch for
    it; a few seconds) and moved into place whole, so a build cut short leaves nothing half-written.

    Raises:
        subprocess.CalledProcessError: the build failed (its output went to stderr).
    """
    dest = model_path(root)
    if (dest / "config.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=dest.parent))
    try:
        subprocess.run([sys.executable, "-m", "phi3space.demo.model", str(tmp / "model")], check=True,
                       stdout=subprocess.DEVNULL)
        os.replace(tmp / "model", dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
