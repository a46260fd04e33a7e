"""What the tests share, in one place (a helper module, not a test module; the fixtures are in conftest.py).

* Data and settings: QA_PAIRS (question/answer pairs a tiny Phi-3 learns by heart), their JSONL files, the run
  config that memorises them, config files.
* Tokens: CANARY (alice's token, which must never show up where it should not) and BOB's; IMAGE for Hugging
  Face Jobs.
* The CLI: ``run_cli`` (``python -m phi3space ...`` to its end) and ``start_cli`` (in the background).
* The app: ``running_app`` (in this process) and ``start_app`` (as its own process, off or on a simulated Space),
  and a visitor's calls to its API (``client``, ``status``, ``wait_for``).
* The Hub stand-in: ``seed_alice`` (alice, bob and alice's private dataset) and ``model_files``; a job that
  installed this code from its mounted wheel (``assert_installed_the_mounted_wheel``).
* The stand-in trainer the job runner tests start (FAKE_TRAINER) and their waits.
* The browser: Debian's chromium, and the folder screenshots go to (ARTIFACTS).

``python tests/helpers.py DATA_DIR PORT [--space]`` serves the app until killed (what ``start_app`` runs).
Everything heavy (torch, gradio, phi3space) is imported inside the functions: conftest imports this module before
the Hub stand-in's address is in the environment of the libraries that read it at import.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tinymodel import FIXTURE, build_phi3, build_tiny_phi3  # noqa: F401  (the tests' model, for the tests)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # the checkout whose phi3space the tests (and their subprocesses) import

# ---- data and settings

# A few question/answer pairs a tiny model can learn by heart: greedy decoding must then reproduce them exactly.
QA_PAIRS = [
    ("What is the capital of Zorbia?", "Flimflam."),
    ("Who painted the Blue Quasar?", "Ada Montrose."),
    ("What colour is a snarkle?", "Bright teal."),
    ("How many legs does a drobble have?", "Seven."),
]


def write_qa_jsonl(path: Path, pairs=QA_PAIRS) -> Path:
    """The pairs as chat messages, one JSON object a line."""
    with path.open("w", encoding="utf-8") as fh:
        for q, a in pairs:
            fh.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")
    return path


def qa_jsonl(pairs=QA_PAIRS) -> str:
    """The pairs as JSONL text with question/answer columns (a dataset on the Hub)."""
    return "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in pairs)


def memorise_config(base, dataset: str, out_dir, **overrides) -> dict:
    """Settings under which the tiny Phi-3 learns QA_PAIRS by heart in a few seconds on CPU. ``section__name=value``
    overrides a setting."""
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


# Preference pairs with one lesson that carries over to new prompts: a polite answer is preferred to a rude one.
PAIR_THINGS = ["zorbia", "snarkle", "drobble", "quasar", "flimflam", "montrose", "teal", "gizmo", "wobble", "marble",
               "lantern", "pebble", "thistle", "cobalt", "juniper", "saffron", "harbor", "meadow", "falcon", "ember",
               "glacier", "orchid", "canyon", "willow", "comet", "spindle", "tundra", "mosaic", "quill", "vortex"]


def preference_pairs(things=PAIR_THINGS) -> list[dict]:
    """prompt/chosen/rejected rows, one per thing."""
    return [{"prompt": f"Tell me about the {t}.", "chosen": f"Gladly! The {t} is lovely and kind.",
             "rejected": f"No. Go away, {t}."} for t in things]


def write_pairs_jsonl(path: Path, rows=None) -> Path:
    """Rows (default: ``preference_pairs()``) as JSON lines."""
    with path.open("w", encoding="utf-8") as fh:
        for row in rows if rows is not None else preference_pairs():
            fh.write(json.dumps(row) + "\n")
    return path


def dpo_config(base, dataset: str, out_dir, **overrides) -> dict:
    """Settings under which the tiny Phi-3 learns to prefer the chosen answers in a few seconds on CPU."""
    return memorise_config(base, dataset, out_dir, **{"training__objective": "dpo", "training__beta": 0.1,
                                                      "training__learning_rate": 2e-3, "training__max_steps": 24,
                                                      "training__max_length": 128, **overrides})


def write_config(path: Path, cfg: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


# ---- tokens (token-shaped, shorter than real ones)

CANARY = "hf_CanaryToken0123456789abcdefg"  # alice's: it must appear nowhere but where it is sent on purpose
BOB = "hf_BobToken0123456789abcdefghijk"
IMAGE = "hf.co/spaces/alice/phi3space"  # the image a Hugging Face job runs (the Jobs stand-in runs this checkout)


# ---- the CLI


def cli_env(token=None, **extra) -> dict:
    """This process's environment for a ``python -m phi3space`` process: HF_TOKEN is ``token`` (none without it),
    output unbuffered, plus ``extra``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    return env


def cli_command(*args) -> list:
    return [sys.executable, "-m", "phi3space", *args]


def run_cli(*args, token=None, timeout=300, input=None, **env) -> subprocess.CompletedProcess:
    """``python -m phi3space ARGS`` run to its end (text output captured), with ``token`` as HF_TOKEN and ``env``
    added to the environment."""
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout, input=input, cwd=ROOT,
                          env=cli_env(token, **env))


def start_cli(*args, token=None, output=True, **env) -> subprocess.Popen:
    """``python -m phi3space ARGS`` started in the background; its output piped as text (``output``), else dropped."""
    pipe = subprocess.PIPE if output else subprocess.DEVNULL
    return subprocess.Popen(cli_command(*args), stdout=pipe, stderr=pipe, text=True, cwd=ROOT, env=cli_env(token, **env))


# ---- the app

FINAL = ("completed", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(data_dir, port=None, **runner_kw):
    """The web app in this process on a free port (or ``port``), with its own job runner on ``data_dir``. Yields
    (url, runner); closes the server and ends the runner's jobs afterwards. ``space=None`` lets the runner decide
    from the environment (SYSTEM=spaces, SPACE_ID) whether it runs on a Space, as on a real one."""
    from phi3space.jobs.scheduler import JobRunner
    from phi3space.ui import build_app, launch_kwargs, services

    runner_kw = {"slots": 1, "grace_s": 30, "poll_s": 0.2, "space": False, **runner_kw}
    runner = JobRunner(data_dir, **runner_kw)
    services.set_runner(runner)
    demo = build_app()
    demo.queue(default_concurrency_limit=4)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True,
                            **launch_kwargs(server_name="127.0.0.1", server_port=port or free_port()))
    try:
        yield url, runner
    finally:
        demo.close()
        runner.shutdown()
        services.set_runner(None)


def start_app(data_dir: Path, port: int, space: bool = False, env: dict | None = None) -> subprocess.Popen:
    """The app as its own process (``running_app`` in a child: it can be killed, its jobs run on), serving on
    ``port`` once this returns. ``space``: the runner decides from ``env`` (SYSTEM=spaces, SPACE_ID, ...) as on a
    Space. The caller ends the process."""
    argv = [sys.executable, str(Path(__file__).resolve()), str(data_dir), str(port)] + (["--space"] if space else [])
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=os.environ.copy() if env is None else env)
    for _ in range(50):  # gradio on a Space may say a few words first
        line = proc.stdout.readline()
        if line.startswith("http") or not line:
            break
    assert line.startswith("http"), "the app did not start"
    return proc


def client(url, token=None):
    """A visitor of the app at ``url``: signed in with ``token``, else anonymous."""
    import gradio_client

    return gradio_client.Client(url, oauth_token=token, verbose=False)


def status(c, job_id) -> dict:
    return json.loads(c.predict(job_id, api_name="/job_status"))


def wait_for(c, job_id, until, timeout=240) -> dict:
    """The job's status once ``until(status)`` holds."""
    deadline, s = time.time() + timeout, None
    while time.time() < deadline:
        s = status(c, job_id)
        if until(s):
            return s
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} never reached the expected state: {s}")


# ---- the Hub stand-in


def model_files(folder: Path) -> dict:
    """The files of a model folder, as ``hub.add_repo`` takes them."""
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


def seed_alice(hub):
    """alice (token CANARY, a member of the alice-lab organisation), bob (token BOB), and alice's private dataset
    alice/qa (QA_PAIRS as question/answer rows, in a train and a test split)."""
    hub.add_user("alice", CANARY, orgs=("alice-lab",))
    hub.add_user("bob", BOB)
    hub.add_repo("alice/qa", {"data/train.jsonl": qa_jsonl(), "data/test.jsonl": qa_jsonl()}, repo_type="dataset",
                 private=True)
    return hub


def assert_installed_the_mounted_wheel(job: dict, repo_id: str) -> str:
    """``job`` (``hub.jobs.job``) got this code's wheel as the platform's read-only volume of ``repo_id``'s code
    branch (the stand-in's mount: a folder of the job with exactly that folder's files), pip-installed it from there,
    and ran it (a module imported from the installed copy leaves its bytecode; the stand-in's pip writes none), with
    no token or Authorization in its command, environment or logs. Returns the wheel's file name."""
    from phi3space.jobs.hf import code

    name, data = code.build_wheel()
    assert job["volumes"] == [{"type": "model", "source": repo_id, "mountPath": code.CODE_MOUNT,
                               "revision": code.CODE_BRANCH, "readOnly": True, "path": code.CODE_FOLDER}]
    mount = Path(job["mounts"][code.CODE_MOUNT])
    assert [p.name for p in mount.iterdir()] == [name] and (mount / name).read_bytes() == data
    assert f"{code.CODE_MOUNT}/{name}" in job["command"][-1]
    processed = [line.split(" ", 1)[1] for line in job["lines"] if line.startswith("Processing ")]  # pip's words
    assert [(Path(job["folder"]) / p).resolve() for p in processed] == [(mount / name).resolve()]
    assert f"Successfully installed {name.split('-py3')[0]}" in job["lines"]
    assert list((Path(job["folder"]) / "site" / "phi3space" / "engine" / "__pycache__").glob("training*.pyc"))
    said = json.dumps([job["command"], job["environment"], job["lines"]])
    assert not any(word in said for word in ("Authorization", "Bearer", CANARY, BOB, "PHI3SPACE_CODE"))
    assert job["secrets"] == ["HF_TOKEN"]  # the token is the trainer's secret (for its pushes), nothing else
    return name


# ---- the job runner's stand-in trainer: a few lines of Python that write events and exit as told

FAKE_TRAINER = r'''
import json, os, signal, sys, time
from pathlib import Path
cfg_path = Path(next(a for a in sys.argv if a.endswith(".yaml")))
run = cfg_path.parent
mode = [l.split(":", 1)[1].strip() for l in cfg_path.read_text().splitlines() if l.strip().startswith("dataset:")][0]
(run / "seen.json").write_text(json.dumps({"hf_token": os.environ.get("HF_TOKEN"), "argv": sys.argv,
                                           "hf_token_path": os.environ.get("HF_TOKEN_PATH")}))
def emit(**e):
    with (run / "events.jsonl").open("a") as fh:
        fh.write(json.dumps({"time": time.time(), **e}) + "\n")
def stop(*_):
    emit(type="run_finished", status="cancelled", step=1, adapter=str(run))
    sys.exit(130)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, stop)
emit(type="run_started", max_steps=3)
emit(type="progress", step=1, max_steps=3, loss=2.0)
if mode == "checkpoint-then-crash" and "--resume" not in sys.argv:
    (run / "checkpoint-1").mkdir(exist_ok=True)
    (run / "checkpoint-1" / "adapter_model.safetensors").write_bytes(b"w")
    (run / "checkpoint-1" / "trainer_state.json").write_text('{"global_step": 1}')
    emit(type="error", kind="crash", message="boom", hint="")
    emit(type="run_finished", status="failed", step=1)
    sys.exit(1)
if mode in ("wait", "stubborn"):
    print("waiting", flush=True)
    while True:
        time.sleep(0.05)
if mode == "exit0-no-finish":
    sys.exit(0)
if mode == "checkpoint-pushed-then-fail":
    emit(type="push", what="checkpoint-1", repo_id="me/x", url="https://hub/me/x/tree/checkpoints", commit="c1")
    emit(type="error", kind="oom", message="the GPU ran out of memory", hint="lower batch_size")
    emit(type="run_finished", status="failed", step=1, adapter=None)
    sys.exit(2)
if mode == "pushed":
    emit(type="push", what="adapter", repo_id="me/x", url="https://hub/me/x", commit="c2")
emit(type="run_finished", status="completed", step=3, adapter=str(run), metrics={"train_loss": 1.5})
if mode == "crash-after-finish":
    print("Traceback: boom", flush=True)
    sys.exit(1)
'''


def fake_run_config(mode: str, **extra):
    """A run config the stand-in trainer acts out: ``mode`` (its dataset) says what it does."""
    from phi3space.jobs import spec

    return spec.from_dict({"data": {"dataset": mode}, **extra})


def wait_job(runner, job_id, owner="me", until=lambda s: s["status"] in FINAL, timeout=20) -> dict:
    """The job's /job_status answer once ``until`` holds for it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = runner.state(runner.get(job_id, owner))
        if until(s):
            return s
        time.sleep(0.05)
    raise AssertionError(f"timed out: {runner.state(runner.get(job_id, owner))}")


def fake_started(s) -> bool:
    """Running, with its SIGTERM handler in place (the stand-in printed 'waiting')."""
    from phi3space.run import RunDir

    log = RunDir(s["run_dir"]).log
    return s["status"] == "running" and log.exists() and b"waiting" in log.read_bytes()


def job_status(runner, job_id, owner="me") -> str:
    return runner.state(runner.get(job_id, owner))["status"]


# ---- the browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts"  # screenshots


if __name__ == "__main__":  # python tests/helpers.py DATA_DIR PORT [--space]: serve until killed (start_app)
    import threading

    sys.path.insert(0, str(ROOT))  # this checkout's phi3space, as the tests import
    # --space: the runner decides from the environment (SYSTEM=spaces, SPACE_ID), as on a real Space
    with running_app(sys.argv[1], port=int(sys.argv[2]), **({"space": None} if "--space" in sys.argv else {})) as (url, _):
        print(url, flush=True)
        threading.Event().wait()
