"""The app as a process: a second one on the same data folder is refused with a message; on a Space the owner's
token is out of reach of every library call made for a visitor."""

import os
import subprocess
import sys
import time

import pytest
from helpers import ROOT, free_port


def app_env(data_dir, **extra):
    env = {**os.environ, "PHI3SPACE_DATA_DIR": str(data_dir), "GRADIO_SERVER_NAME": "127.0.0.1", **extra}
    env.pop("HF_TOKEN", None)
    return env


@pytest.mark.slow
def test_a_second_app_on_the_same_data_folder_is_refused(tmp_path):
    first = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=app_env(tmp_path, GRADIO_SERVER_PORT=str(free_port())),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (tmp_path / "jobs.sqlite").exists():
            time.sleep(0.2)
        second = subprocess.run([sys.executable, "app.py"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                                env=app_env(tmp_path, GRADIO_SERVER_PORT=str(free_port())))
        assert second.returncode == 2
        assert f"error: the data folder {tmp_path} is in use by pid {first.pid}" in second.stderr
        assert "hint: " in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None  # the first one is untouched
    finally:
        first.kill()
        first.wait()


PROBE = """
from phi3space.hub.auth import keep_owner_token_out, owner_token
keep_owner_token_out()
import os
from huggingface_hub import get_token
from huggingface_hub.utils import build_hf_headers
print(owner_token() == "hf_OwnerOfTheSpace0123456789", get_token(), "authorization" in build_hf_headers(),
      "HF_TOKEN" in os.environ)
"""


def test_on_a_space_no_library_call_can_pick_up_the_owners_token():
    env = {**os.environ, "HF_TOKEN": "hf_OwnerOfTheSpace0123456789", "SYSTEM": "spaces", "SPACE_ID": "owner/phi3space"}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["True", "None", "False", "False"]
