"""Session-wide test set-up and the shared fixtures (the shared helpers are in helpers.py).

The Hub stand-in must be running and ``HF_ENDPOINT`` set before huggingface_hub, datasets, transformers or peft
are imported anywhere (huggingface_hub reads the endpoint once, at import), so this happens at the top of the
conftest, before any other import of the project.
"""

import os
import sys
import tempfile

# Compiled bytecode is kept, as Python does by default, also where the environment turns that off
# (PYTHONDONTWRITEBYTECODE=1): otherwise every test worker, and every process the tests start (trainers, apps, the
# CLI), compiles the package from source again, and pytest rewrites every test module again (a fifth of the quick
# tier's time). Set before the workers start and before the test modules are imported; __pycache__ is git-ignored.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

from hub_server import HubServer  # noqa: E402

_HF_HOME = tempfile.mkdtemp(prefix="phi3space-hf-home-")
HUB = HubServer().start()
os.environ["HF_ENDPOINT"] = HUB.url
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.pop("HF_TOKEN", None)
# One thread per process for torch (here and in every training process the tests start): the tiny model gains
# nothing from more, and on a small machine the idle threads of several processes spin for the busy cores (a run
# takes twice the time). Set before torch is imported anywhere.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The page opens with the Phi-3-mini defaults in the tests (as on a GPU machine); the demo's own tests set it to 1.
os.environ.setdefault("PHI3SPACE_DEMO", "0")
# A test that builds the app without naming a data folder gets one of its worker's own, never the checkout's ./data:
# two workers sharing it were refused ("the data folder is in use") and left a jobs.sqlite in the checkout.
os.environ["PHI3SPACE_DATA_DIR"] = tempfile.mkdtemp(prefix="phi3space-data-")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from helpers import (  # noqa: E402
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    FAKE_TRAINER,
    FIXTURE,
    IMAGE,
    build_tiny_phi3,
    memorise_config,
    model_files,
    running_app,
    seed_alice,
    write_qa_jsonl,
)


def _hub_backoff_sooner(scale=0.01):
    """huggingface_hub waits 1, 2, 4, 8, 8 s between its own tries of a Hub request answered 429 or 5xx (its
    http_backoff); the Hub stand-in answers so on purpose, and those waits were whole seconds of several tests. In
    the test processes each wait is ``scale`` as long: the same tries, sooner (the processes the tests start keep
    the library's waits)."""
    import time
    from types import SimpleNamespace

    from huggingface_hub.utils import _http

    _http.time = SimpleNamespace(**{**vars(time), "sleep": lambda seconds: time.sleep(seconds * scale)})


_hub_backoff_sooner()


def pytest_collection_modifyitems(items):
    """The slow tier first (in its own order), the quick tests after it: with several workers (pytest -n), the
    long tests start at once and the many short ones fill the workers' ends evenly."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# The variables a job runner made for a Space in this process changes, as app.py's start does on a real Space
# (phi3space.hub.auth.keep_owner_token_out: the owner's token out, implicit tokens off). Left set, they would follow
# every later test of this worker into the processes it starts (a card's snippet would then send no token).
_SPACE_START_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_DISABLE_IMPLICIT_TOKEN", "HF_TOKEN_PATH")


@pytest.fixture(autouse=True)
def _environment_as_it_was():
    """Each test starts as a fresh process would: the Space's start variables as they were, and no repo name that
    ``output.push_to: auto`` already gave out (a test that expects you/NAME got NAME-2 after another test's NAME)."""
    from phi3space.config import schema

    saved = {name: os.environ.get(name) for name in _SPACE_START_VARS}
    schema._given.clear()
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# ---- the Hub stand-in


@pytest.fixture
def hub():
    """The Hub stand-in, emptied of repos, users and injected faults before each test."""
    HUB.reset()
    return HUB


@pytest.fixture
def alice(hub):
    """The Hub stand-in with alice (token CANARY, in the alice-lab organisation), bob (token BOB) and alice's
    private dataset alice/qa (helpers.seed_alice)."""
    return seed_alice(hub)


@pytest.fixture
def hub_model(hub, tiny_model) -> str:
    """The tiny Phi-3 on the Hub as acme/tiny-phi3 (MIT licensed); its repo ID."""
    hub.add_repo("acme/tiny-phi3", {**model_files(tiny_model), "README.md": "---\nlicense: mit\n---\n# tiny\n"})
    return "acme/tiny-phi3"


@pytest.fixture
def jobs_image(monkeypatch) -> str:
    """The image Hugging Face jobs run, as a Space's owner (or the CLI's user) names it."""
    monkeypatch.setenv("PHI3SPACE_JOBS_IMAGE", IMAGE)
    return IMAGE


# ---- the model, data and a trained run


def _built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder ``name`` that ``build(folder)`` fills, built once for the whole test run: under pytest -n the
    workers share the folder above their own temporary ones, and a file lock makes the others wait for the first
    (the pattern pytest-xdist's documentation gives for session fixtures). A build that failed is tried again."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def build_once(tmp_path_factory):
    """``build_once(name, build)``: the folder ``build(folder)`` filled, once for the whole run, all workers
    together (for what many tests read and none changes: the tiny model, a trained run, its exports)."""
    return lambda name, build: _built_once(tmp_path_factory, name, build)


@pytest.fixture(scope="session")
def tiny_model(build_once) -> Path:
    """Folder of a tiny random-weight Phi-3 (real tokenizer, hidden 64, 2 layers), built once per test run."""
    return build_once("tiny-phi3", build_tiny_phi3)


@pytest.fixture(scope="session")
def tokenizer():
    from phi3space.engine.modeling import load_tokenizer

    return load_tokenizer(str(FIXTURE))


@pytest.fixture
def qa_file(tmp_path) -> Path:
    return write_qa_jsonl(tmp_path / "qa.jsonl")


@pytest.fixture(scope="session")
def trained_run(tiny_model, build_once) -> Path:
    """A finished run folder (``run``, beside its data ``qa.jsonl``) whose adapter answers QA_PAIRS exactly, trained
    once per test run through the API. Every worker reads the same folder: tests copy it before they change it."""
    from phi3space import config
    from phi3space.engine import training

    def train(root):
        data = write_qa_jsonl(root / "qa.jsonl")
        training.train(config.from_dict(memorise_config(tiny_model, str(data), root / "run")))

    return build_once("trained", train) / "run"


# ---- the app


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app launched once for the test module (helpers.running_app), on a free port, with its own data folder:
    (url, runner)."""
    with running_app(tmp_path_factory.mktemp("app-data")) as started:
        yield started


# ---- the job runner's stand-in trainer


@pytest.fixture
def fake_trainer(tmp_path) -> Path:
    """The stand-in trainer (helpers.FAKE_TRAINER) as a script: ``python SCRIPT CONFIG`` acts out the config."""
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    return script


# ---- the browser


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium under Playwright, headless, one per test module (Playwright's sync API keeps its own event
    loop while it runs). Skipped where it is missing, unless
    PHI3SPACE_REQUIRE_BROWSER=1 (CI), where that fails."""
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        if os.environ.get("PHI3SPACE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing and PHI3SPACE_REQUIRE_BROWSER=1 (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} is not installed")
    ARTIFACTS.mkdir(exist_ok=True)
    sync_api = pytest.importorskip("playwright.sync_api")
    # Playwright waits 5 s for an expectation unless told: with the suite's workers sharing the machine (pytest -n),
    # a page reload can take longer. Waits that matter say their own timeout.
    sync_api.expect.set_options(timeout=20_000)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# ---- a real llama.cpp


@pytest.fixture(scope="session")
def llama_cpp():
    """llama.cpp's prebuilt CPU binaries from npm (node-llama-cpp, installed on first use: tests/llama.py). Skipped
    where npm is missing or cannot install it, unless PHI3SPACE_REQUIRE_LLAMA_CPP=1 (CI), where that fails."""
    import llama

    try:
        return llama.LlamaCpp(llama.install())
    except (RuntimeError, OSError, StopIteration) as exc:
        if os.environ.get("PHI3SPACE_REQUIRE_LLAMA_CPP") == "1":
            pytest.fail(f"llama.cpp is needed (PHI3SPACE_REQUIRE_LLAMA_CPP=1) and could not be had: {exc}")
        pytest.skip(f"no llama.cpp here: {exc}")
