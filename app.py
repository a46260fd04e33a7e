"""Hugging Face Space entry point: the phi3space web app (python app.py, or `gradio app.py` while developing)."""

import os

from phi3space.ui import build_app, launch_kwargs

demo = build_app()

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=4).launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
                                                   **launch_kwargs())
