"""Hugging Face Space entry point: the phi3space web app (python app.py, or `gradio app.py` while developing).

It listens on 127.0.0.1 off a Space (GRADIO_SERVER_NAME=0.0.0.0 opens it to the network) and on 0.0.0.0 on a Space.
"""

from phi3space.ui import build_app, launch_kwargs

demo = build_app()

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=4).launch(**launch_kwargs())
