"""Chat on ZeroGPU as the platform runs it: replies come from a module-level ``spaces.GPU`` function, decorated
once, in a worker forked from the app, with plain data pickled in and text pickled out (tests/fixtures/zerogpu holds a
stand-in for `spaces` that does exactly that and logs what it saw); the models are loaded at start; `spaces` is
imported before torch; the real `spaces.GPU` wrapper is made once for the function whatever the replies ask."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import ROOT, client, free_port

STAND_IN = ROOT / "tests" / "fixtures" / "zerogpu"


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
    from phi3space.chat.zerogpu import gpu_seconds

    proc, url, log, started = _app(tmp_path, tiny_model)
    try:
        assert any(f"chat model {tiny_model} loaded at start" in line for line in started), started
        c = client(url)
        stream = c.submit(str(trained_run), "What colour is a snarkle?", "", 24, api_name="/chat")
        assert stream.result() == "Bright teal."
        assert len(stream.outputs()) >= 2  # streamed back, piece by piece, across the pickling boundary
        assert c.predict(str(trained_run), "How many legs does a drobble have?", "", 1000, api_name="/chat") == "Seven."
    finally:
        proc.kill()
        proc.wait()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    imported = [r for r in records if r["event"] == "import" and r["pid"] == proc.pid]
    assert imported and not imported[0]["torch_imported"]  # `spaces` came before torch (and CUDA)
    decorated = [r for r in records if r["event"] == "decorate"]
    assert [(r["module"], r["function"]) for r in decorated] == [("phi3space.chat.zerogpu", "reply")]  # once
    calls = [r for r in records if r["event"] == "call"]
    assert [r["duration"] for r in calls] == [gpu_seconds(24), gpu_seconds(1000)]  # each asks for its own time
    assert gpu_seconds(1000) > gpu_seconds(24)
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


REAL_SPACES = """
import os, sys, types
import spaces                                  # the real package (off ZeroGPU: imports without CUDA)
from spaces.config import Config
from spaces.zero import decorator

made = []
wrappers = types.ModuleType("spaces.zero.wrappers")   # the parts that need a CUDA machine, left out
def generator_function_wrapper(task, duration, size):
    made.append((task.__module__, task.__name__, duration))
    def handler(*args, **kwargs):
        yield from task(*args, **kwargs)
    return handler
wrappers.generator_function_wrapper = generator_function_wrapper
wrappers.regular_function_wrapper = generator_function_wrapper
sys.modules["spaces.zero.wrappers"] = wrappers
sys.modules["spaces.zero.client"] = types.ModuleType("spaces.zero.client")
Config.zero_gpu = True
os.environ["SPACES_ZERO_GPU"] = "true"

from phi3space.chat import engines, zerogpu
from phi3space.generation import GenerationSettings
from phi3space.ui import chat_service
from phi3space.ui.services import Visitor

class Engine:
    def stream(self, messages, adapter, max_seconds, **settings):
        yield str(settings["max_new_tokens"])

engines._engines["some/base"] = Engine()
chat_service.engine_for = lambda base, token, runner=None: engines._engines[base]
chat_service.get_runner = lambda: types.SimpleNamespace(touch=lambda: None)
replies = [list(chat_service.stream_reply(None, "some/base", [{"role": "user", "content": "hi"}], Visitor("me", None),
                                          False, GenerationSettings(max_new_tokens=n))) for n in (32, 512, 1000)]
print(replies)
print(len(made), made[0][:2], made[0][2] is zerogpu.duration)
print(decorator.decorated_cache[zerogpu.reply] is zerogpu.on_gpu)
print([zerogpu.duration("some/base", None, [], {"max_new_tokens": n}, 30) for n in (32, 512, 2048)])
"""


def test_the_real_spaces_wrapper_is_made_once_and_sized_per_request():
    pytest.importorskip("spaces")
    out = subprocess.run([sys.executable, "-c", REAL_SPACES], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "[['32'], ['512'], ['1000']]"  # three replies, each through the one wrapper
    assert lines[1] == "1 ('phi3space.chat.zerogpu', 'reply') True"  # made once, with the per-request duration
    assert lines[2] == "True"
    low, mid, high = json.loads(lines[3])
    assert low == 60 and low < mid < high <= 300
