"""Session-wide test set-up.

The Hub stand-in must be running and ``HF_ENDPOINT`` set before huggingface_hub, datasets, transformers or peft
are imported anywhere (huggingface_hub reads the endpoint once, at import), so this happens at the top of the
conftest, before any other import of the project.
"""

import os
import tempfile

from hub_server import HubServer  # noqa: E402

_HF_HOME = tempfile.mkdtemp(prefix="phi3space-hf-home-")
HUB = HubServer().start()
os.environ["HF_ENDPOINT"] = HUB.url
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.pop("HF_TOKEN", None)

import pytest  # noqa: E402


@pytest.fixture
def hub():
    """The Hub stand-in, emptied of repos, users and injected faults before each test."""
    HUB.reset()
    return HUB


from pathlib import Path  # noqa: E402

from tinymodel import FIXTURE, build_tiny_phi3  # noqa: E402

# A few question/answer pairs a tiny model can learn by heart: greedy decoding must then reproduce them exactly.
QA_PAIRS = [
    ("What is the capital of Zorbia?", "Flimflam."),
    ("Who painted the Blue Quasar?", "Ada Montrose."),
    ("What colour is a snarkle?", "Bright teal."),
    ("How many legs does a drobble have?", "Seven."),
]


def write_qa_jsonl(path: Path, pairs=QA_PAIRS) -> Path:
    import json

    with path.open("w", encoding="utf-8") as fh:
        for q, a in pairs:
            fh.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")
    return path


def memorise_config(base: Path, dataset: str, out_dir: Path, **overrides) -> dict:
    """Settings under which the tiny Phi-3 learns QA_PAIRS by heart in a few seconds on CPU."""
    cfg = {
        "model": {"base": str(base)},
        "data": {"dataset": dataset, "eval_fraction": 0},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "training": {"learning_rate": 5e-3, "lr_scheduler": "constant", "warmup_ratio": 0.0, "max_steps": 40,
                     "batch_size": 4, "grad_accum": 1, "logging_steps": 5, "save_steps": 20},
        "output": {"dir": str(out_dir)},
    }
    for key, value in overrides.items():
        section, name = key.split("__", 1)
        cfg.setdefault(section, {})[name] = value
    return cfg


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """Folder of a tiny random-weight Phi-3 (real tokenizer, hidden 64, 2 layers), built once per session."""
    return build_tiny_phi3(tmp_path_factory.mktemp("tiny-phi3"))


@pytest.fixture(scope="session")
def tokenizer():
    from phi3space.engine.modeling import load_tokenizer

    return load_tokenizer(str(FIXTURE))


@pytest.fixture
def qa_file(tmp_path) -> Path:
    return write_qa_jsonl(tmp_path / "qa.jsonl")


@pytest.fixture(scope="session")
def trained_run(tiny_model, tmp_path_factory) -> Path:
    """A finished run folder whose adapter answers QA_PAIRS exactly (trained once per session through the API)."""
    from phi3space import config
    from phi3space.engine import training

    root = tmp_path_factory.mktemp("trained")
    data = write_qa_jsonl(root / "qa.jsonl")
    cfg = config.from_dict(memorise_config(tiny_model, str(data), root / "run"))
    return training.train(cfg)
