"""Chat on ZeroGPU as the platform runs it: replies come from a module-level ``spaces.GPU`` function, decorated
once, in a worker forked from the app, with plain data pickled in and text pickled out (tests/fixtures/zerogpu holds a
stand-in for `spaces` that does exactly that and logs what it saw); the models are loaded at start; `spaces` is
imported before torch; the real `spaces.GPU` wrapper is made once for the function whatever the replies ask."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import ROOT, client, free_port

STAND_IN = ROOT / "tests" / "fixtures" / "zerogpu"
pytestmark = pytest.mark.xdist_group("zerogpu")  # one worker: the scenarios of a module-wide process are shared


def _app(tmp_path, tiny_model, **extra):
    port, log = free_port(), tmp_path / "spaces.log"
    env = {**os.environ, "PHI3SPACE_DATA_DIR": str(tmp_path / "data"), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(port), "SPACES_ZERO_GPU": "true", "FAKE_SPACES_LOG": str(log),
           "PHI3SPACE_CHAT_BASES": str(tiny_model), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(STAND_IN), os.environ.get("PYTHONPATH", "")]), **extra}
    env.pop("HF_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "http://" in line:
            return proc, f"http://127.0.0.1:{port}/", log, lines
    proc.kill()
    raise AssertionError("the app did not start:\n" + "".join(lines))


@pytest.mark.slow
def test_chat_on_zerogpu_streams_the_trained_answer_from_a_forked_worker(trained_run, tiny_model, tmp_path):
    from gradio_client.exceptions import AppError

    from phi3space.chat.engine import MAX_SECONDS
    from phi3space.chat.zerogpu import gpu_seconds

    elsewhere = shutil.copytree(trained_run, tmp_path / "on-another-base", ignore=shutil.ignore_patterns("events*"))
    config = json.loads((elsewhere / "adapter_config.json").read_text())
    (elsewhere / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "acme/phi-3.5-x"}))
    schedule = tmp_path / "schedule"
    proc, url, log, started = _app(tmp_path, tiny_model, FAKE_SPACES_SCHEDULE=str(schedule))
    try:
        assert any(f"chat model {tiny_model} loaded at start" in line for line in started), started
        c = client(url)
        stream = c.submit(str(trained_run), "What colour is a snarkle?", "", 24, api_name="/chat")
        assert stream.result() == "Bright teal."
        assert len(stream.outputs()) >= 2  # streamed back, piece by piece, across the pickling boundary
        with pytest.raises(AppError) as refused:  # a base not loaded at start: a sentence, and nothing evicted
            c.predict(str(elsewhere), "What colour is a snarkle?", api_name="/chat")
        assert "acme/phi-3.5-x is not loaded here" in str(refused.value) and "PHI3SPACE_CHAT_BASES" in str(refused.value)
        assert c.predict(str(trained_run), "How many legs does a drobble have?", "", 1000, api_name="/chat") == "Seven."
        schedule.write_text("quota")  # ZeroGPU refuses the next call: the visitor reads its sentence and a hint
        with pytest.raises(AppError) as refused:
            c.predict(str(trained_run), "What colour is a snarkle?", api_name="/chat")
        assert "exceeded your free ZeroGPU quota" in str(refused.value) and "Hint: Sign in" in str(refused.value)
    finally:
        proc.kill()
        proc.wait()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    imported = [r for r in records if r["event"] == "import" and r["pid"] == proc.pid]
    assert imported and not imported[0]["torch_imported"]  # `spaces` came before torch (and CUDA)
    decorated = [r for r in records if r["event"] == "decorate"]
    assert [(r["module"], r["function"]) for r in decorated] == [("phi3space.chat.zerogpu", "reply")]  # once
    calls = [r for r in records if r["event"] == "call"]
    assert [r["duration"] for r in calls] == [gpu_seconds(24, MAX_SECONDS), gpu_seconds(1000, MAX_SECONDS)]  # each asks for its own time
    assert gpu_seconds(1000, MAX_SECONDS) > gpu_seconds(24, MAX_SECONDS)
    assert all(r["worker"] != proc.pid for r in calls)


@pytest.mark.slow
def test_on_zerogpu_a_chat_argument_that_cannot_cross_is_a_failure_not_a_silent_fallback(tiny_model, tmp_path):
    """The stand-in is as strict as ZeroGPU: the ChatEngine itself (a lock, a thread) cannot be pickled."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(STAND_IN)!r})
        import spaces
        from phi3space.chat import engines
        engine = engines.engine({str(tiny_model)!r})

        def leaky(engine, messages):
            yield from engine.stream(messages)

        try:
            list(spaces.GPU(duration=60)(leaky)(engine, [{{"role": "user", "content": "hi"}}]))
        except (TypeError, AttributeError, __import__("pickle").PicklingError) as exc:
            print("refused:", type(exc).__name__)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SPACES_ZERO_GPU": "true"})
    assert "refused:" in out.stdout, out.stdout + out.stderr


# ---- the web process under ZeroGPU's CUDA emulation: the stand-in, and the real `spaces` where it runs here

# The real `spaces` 0.51.3 imports on this CPU build of torch once three things it reads from a CUDA build are there
# (torch.version.cuda, torch._C._cuda_init, a picklable torch.cuda._is_in_bad_fork); nothing else of it is changed.
PRELUDE = """
import json, os, shutil, sys, threading
if os.environ.get("USE_REAL_SPACES") == "1":
    import torch
    torch.version.cuda = "12.8"
    def _cuda_init():
        raise AssertionError("Torch not compiled with CUDA enabled")
    def _not_in_bad_fork():
        return False
    torch._C._cuda_init = _cuda_init
    torch.cuda._is_in_bad_fork = _not_in_bad_fork
else:
    sys.path.insert(0, os.environ["STAND_IN"])
from phi3space.chat import engines, zerogpu  # imports spaces on this thread, as app.py does
import spaces
import torch
print(json.dumps({"spaces": spaces.__file__}))

def in_a_request_thread(fn):
    out = {}
    def run():
        try:
            out["value"] = fn()
        except Exception as exc:
            out["error"] = type(exc).__name__
            out["message"], out["hint"] = getattr(exc, "message", str(exc)), getattr(exc, "hint", None)
    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out

from phi3space.generation import GenerationSettings
from phi3space.ui import chat_service
from phi3space.ui.services import Visitor
from types import SimpleNamespace
chat_service.get_runner = lambda: SimpleNamespace(touch=lambda: None, before_start=[], gpu_jobs=lambda: [])
ME = Visitor("me", None)
HI = [{"role": "user", "content": "hi"}]

def ask(base, max_new_tokens=8):
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    return in_a_request_thread(lambda: list(chat_service.stream_reply(None, base, HI, ME, False, settings))[-1])
"""

SERVED = """
torch.nn.Linear(2, 2).to("cuda")  # on the thread that imported spaces: emulated
def place():
    torch.nn.Linear(2, 2).to("cuda")
print(json.dumps({"elsewhere": in_a_request_thread(place)}))

tiny = os.environ["PHI3SPACE_CHAT_BASES"]
other = shutil.copytree(tiny, os.environ["OTHER_BASE"])  # a second Phi-3 base, loadable, not preloaded
print(json.dumps({"preloaded": zerogpu.start()}))
print(json.dumps({"other": ask(other), "held": engines.held()}))
engines.drop_all()  # a job starting on a GPU machine: the preloaded base stays
print(json.dumps({"after_drop": engines.held()}))
if os.environ.get("USE_REAL_SPACES") != "1":  # the stand-in's worker can reply on this CPU
    print(json.dumps({"served": ask(tiny)}))
"""


def _scenario(parts, tmp_path, tiny_model, real: bool, **env) -> list[dict]:
    """Run ``parts`` (scripts after PRELUDE) one after the other in one process (one start of torch and the models
    for several scenarios); what each part printed, as one dict per part."""
    if real:
        pytest.importorskip("spaces")
    env = {**os.environ, "SPACES_ZERO_GPU": "true", "STAND_IN": str(STAND_IN), "USE_REAL_SPACES": "1" if real else "0",
           "PHI3SPACE_CHAT_BASES": str(tiny_model), "OTHER_BASE": str(tmp_path / "other-base"),
           "SPACES_ZERO_DEVICE_API_URL": "http://127.0.0.1:9", **env}
    env.pop("PHI3SPACE_CHAT_ENGINES", None)
    script = PRELUDE + "".join(f"\nprint(json.dumps({{'part': {i}}}))\n" + part for i, part in enumerate(parts))
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert ("fixtures" in records[0]["spaces"]) != real  # the package the test meant
    found = [{} for _ in parts]
    for r in records[1:]:
        if set(r) == {"part"}:
            at = r["part"]
        else:
            found[at].update(r)
    return found


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory, tiny_model):
    """The stand-in's scenarios, served and failures, in one process: (what each printed, its folder)."""
    tmp = tmp_path_factory.mktemp("zerogpu-stand-in")
    return _scenario([SERVED, FAILURES], tmp, tiny_model, real=False), tmp


@pytest.fixture(scope="module")
def real_spaces(tmp_path_factory, tiny_model):
    """The real spaces' scenarios, served and its device API's refusals, in one process: (what each printed, its
    folder)."""
    tmp = tmp_path_factory.mktemp("zerogpu-real")
    port = free_port()
    env = {"SPACES_ZERO_DEVICE_API_URL": f"http://127.0.0.1:{port}", "DEVICE_API_PORT": str(port),
           "ZEROGPU_PROC_SELF_CGROUP_PATH": str(_cgroup(tmp))}
    return _scenario([SERVED, REAL_SCHEDULE], tmp, tiny_model, real=True, **env), tmp


@pytest.mark.parametrize("real", [False, True], ids=["stand-in", "real-spaces"])
def test_on_zerogpu_a_base_not_loaded_at_start_is_refused_by_name_and_the_preloaded_one_stays(request, tiny_model,
                                                                                            real):
    """spaces emulates CUDA only on the thread that imported it, so a model can be loaded at start and nowhere else:
    a request for another base gets a sentence naming it and what the owner can set, and nothing is evicted."""
    parts, tmp_path = request.getfixturevalue("real_spaces" if real else "stand_in")
    found = parts[0]
    assert found["elsewhere"]["error"] in ("RuntimeError", "AssertionError")  # a CUDA placement off that thread fails
    if not real:
        assert "Low-level CUDA init" in found["elsewhere"]["message"]  # where the real one's _cuda_init_raise says
    assert found["preloaded"] == [str(tiny_model)]
    other = found["other"]
    assert other["error"] == "ModelError", other
    assert str(tmp_path / "other-base") in other["message"] and "only when the Space starts" in other["message"]
    assert "PHI3SPACE_CHAT_BASES" in other["hint"] and str(tiny_model) in other["hint"]
    assert found["held"] == [str(tiny_model)]  # the refusal loaded nothing and dropped nothing
    assert found["after_drop"] == [str(tiny_model)]
    if not real:
        assert isinstance(found["served"]["value"], str), found["served"]  # the preloaded base still answers


FAILURES = """
tiny = os.environ["PHI3SPACE_CHAT_BASES"]
zerogpu.start()
broken = os.environ["OTHER_BASE"] + "-adapter"  # a folder that is gone by the time the worker reads it
def reply_with(adapter):
    settings = GenerationSettings(max_new_tokens=8)
    return in_a_request_thread(lambda: list(chat_service.stream_reply(adapter, tiny, HI, ME, False, settings)))
print(json.dumps({"worker_refused": reply_with(broken)}))  # a ModelError raised in the worker
spaces._time_scale = 1e-6  # the platform takes the GPU back at once
print(json.dumps({"aborted": reply_with(None)}))
spaces._time_scale = 1.0
for case in ("quota", "queue", "unavailable"):
    os.environ["FAKE_SPACES_SCHEDULE"] = case
    print(json.dumps({case: reply_with(None)}))
"""


def test_on_zerogpu_every_failure_in_the_worker_or_the_platform_is_a_sentence(stand_in):
    """spaces passes on an exception raised in its worker as the class name only, and raises its own gr.Error for a
    GPU taken back, a quota or a queue: each becomes a ModelError with a message and a hint (the page and /chat
    show those as they are)."""
    found = stand_in[0][1]
    assert all(found[case]["error"] == "ModelError" and found[case]["hint"] for case in found), found
    assert "adapter" in found["worker_refused"]["message"] and found["worker_refused"]["message"] != "ModelError"
    assert "took the GPU back" in found["aborted"]["message"]
    assert "exceeded your free ZeroGPU quota" in found["quota"]["message"] and "Sign in" in found["quota"]["hint"]
    assert "No GPU was available after 60s" in found["queue"]["message"]
    assert "No GPU was available" in found["unavailable"]["message"]


REAL_SCHEDULE = """
import http.server
answers = {}

class DeviceAPI(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        status, headers, body = answers.get(self.path.split("?")[0], (200, {}, b""))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["DEVICE_API_PORT"])), DeviceAPI)
threading.Thread(target=server.serve_forever, daemon=True).start()
tiny = os.environ["PHI3SPACE_CHAT_BASES"]
zerogpu.start()
JSON = {"Content-Type": "application/json"}
cases = {
    "quota": (429, {**JSON, "X-Authenticated": "regular"}, json.dumps({"left": 10, "wait": 250}).encode()),
    "unavailable": (503, JSON, b"{}"),
    "queue": (200, {"Content-Type": "text/event-stream"}, b"event: failed\\n\\n"),
    "worker": (200, JSON, json.dumps({"idle": False, "nvidiaIndex": 0, "nvidiaUUID": "GPU-0",
                                      "allowToken": "t"}).encode()),  # the worker starts, and finds no CUDA here
}
for case, answer in cases.items():
    answers["/schedule"] = answer
    print(json.dumps({case: ask(tiny)}))
# Everything measured is printed. The real spaces' threads of the failed worker sometimes abort the interpreter's
# teardown ("terminate called without an active exception", under load): end without it.
import sys
sys.stdout.flush()
os._exit(0)
"""


def test_the_real_spaces_refusals_reach_the_visitor_as_sentences(real_spaces):
    """The real spaces.GPU wrapper and client (0.51.3), against a stand-in for ZeroGPU's device API: its quota,
    queue and "no GPU" refusals and a failed worker come back as ModelError sentences with a hint."""
    found = real_spaces[0][1]
    assert all(found[case]["error"] == "ModelError" and found[case]["hint"] for case in found), found
    assert "GPU limit" in found["quota"]["message"]  # spaces' own words for an anonymous caller over quota
    assert "No GPU was available after 60s" in found["queue"]["message"]
    assert "No GPU was available" in found["unavailable"]["message"]
    assert "worker failed" in found["worker"]["message"] and "AssertionError" in found["worker"]["message"]


def _cgroup(tmp_path):
    path = tmp_path / "cgroup"
    path.write_text("0::/phi3space-test\n")
    return path


def test_the_gpu_time_asked_covers_the_longest_the_reply_may_write():
    """ZeroGPU takes the GPU back after the duration asked: the reply is cut inside the worker before that, for a
    signed-in visitor's 120 s and an anonymous caller's 30 s alike, and a short reply asks for less."""
    from phi3space.chat import engines, zerogpu
    from phi3space.chat.engine import MAX_SECONDS
    from phi3space.generation import MAX_NEW_TOKENS
    from phi3space.ui.chat_service import ANONYMOUS_MAX_SECONDS

    class Engine:
        def stream(self, messages, adapter, max_seconds, **settings):
            yield max_seconds

    engines._engines["some/base"] = Engine()
    try:
        for max_seconds in (MAX_SECONDS, ANONYMOUS_MAX_SECONDS):
            for tokens in (1, 256, MAX_NEW_TOKENS):
                args = ("some/base", None, [], {"max_new_tokens": tokens}, max_seconds)
                (writes,) = zerogpu.reply(*args)
                asked = zerogpu.duration(*args)
                assert writes <= max_seconds and writes + 10 <= asked <= 300  # room for the worker's start
        longest = zerogpu.duration("some/base", None, [], {"max_new_tokens": MAX_NEW_TOKENS}, MAX_SECONDS)
        assert longest > MAX_SECONDS  # a signed-in visitor's longest reply is covered
        assert zerogpu.duration("some/base", None, [], {"max_new_tokens": 32}, MAX_SECONDS) < longest
    finally:
        engines._engines.pop("some/base", None)
