"""Session-wide test set-up.

The Hub stand-in must be running and ``HF_ENDPOINT`` set before huggingface_hub, datasets, transformers or peft
are imported anywhere (huggingface_hub reads the endpoint once, at import), so this happens at the top of the
conftest, before any other import of the project.
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))

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
