"""Launch the web app in-process on a free port, with its own job runner and data folder, and call its API as a
visitor does (for the app tests)."""

import contextlib
import json
import socket
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(data_dir, port=None, **runner_kw):
    """Yields (url, runner); closes the server and ends the runner's jobs afterwards."""
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


if __name__ == "__main__":  # python tests/ui_app.py DATA_DIR PORT [--space]: serve until killed (restart tests)
    import sys
    import threading
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's phi3space, as the tests import

    # --space: the runner decides from the environment (SYSTEM=spaces, SPACE_ID), as on a real Space
    with running_app(sys.argv[1], port=int(sys.argv[2]), **({"space": None} if "--space" in sys.argv else {})) as (url, _):
        print(url, flush=True)
        threading.Event().wait()
