"""Hugging Face Space entry point: the phi3space web app (python app.py, or `gradio app.py` while developing).

It listens on 127.0.0.1 off a Space (GRADIO_SERVER_NAME=0.0.0.0 opens it to the network) and on 0.0.0.0 on a Space.
"""

import sys

from phi3space.hub.auth import keep_owner_token_out

keep_owner_token_out()  # before gradio loads huggingface_hub: no visitor's call may carry the owner's token

from phi3space.chat import zerogpu  # noqa: E402  (on ZeroGPU: imports `spaces` before CUDA and before launch)
from phi3space.errors import Phi3SpaceError  # noqa: E402
from phi3space.ui import build_app, launch_kwargs, services  # noqa: E402

try:
    services.get_runner()  # takes the data folder's lock now: a second app on the same folder stops here
except Phi3SpaceError as exc:
    print(f"error: {exc.message}\nhint: {exc.hint}", file=sys.stderr)
    sys.exit(2)

zerogpu.start()  # on ZeroGPU, the chat models are loaded now (the GPU worker inherits them)

demo = build_app()

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=4).launch(**launch_kwargs())
