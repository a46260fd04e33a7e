"""A real llama.cpp for the tests: the prebuilt CPU binaries of node-llama-cpp (npm), installed on first use into
tests/llama_cpp/node_modules (git-ignored; `npm` must be on the PATH, as Node 20's is).

* ``LlamaCpp.read(gguf, texts, prompts)``: tokens and greedy replies from llama.cpp itself (tests/llama_cpp/probe.mjs
  through node-llama-cpp), and what it logged while loading the file.
* ``LlamaCpp.render(template, messages)``: llama.cpp's own chat-template engine (``llama_chat_apply_template`` in
  libllama, the one llama-cli uses), called through ctypes.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

VERSION = "3.21.1"  # the newest that installs on Node 20 here
FOLDER = Path(__file__).resolve().parent / "llama_cpp"
PROBE = FOLDER / "probe.mjs"


def _platform_package() -> str:
    system = {"linux": "linux", "darwin": "mac", "win32": "win"}.get(sys.platform, sys.platform)
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower(), "x64")
    return f"@node-llama-cpp/{system}-{arch}"


def install() -> Path:
    """node-llama-cpp and its CPU binaries for this machine, installed once (a lock keeps parallel test workers from
    installing twice). Returns the folder of the binaries.

    Raises:
        RuntimeError: npm is missing or the install failed (its output says why).
    """
    binaries = FOLDER / "node_modules" / _platform_package() / "bins"
    with open(FOLDER / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (FOLDER / "node_modules" / "node-llama-cpp" / "package.json").exists() or not binaries.exists():
            npm = shutil.which("npm")
            if npm is None:
                raise RuntimeError("npm is not installed (Node 20 brings it)")
            # Only this machine's CPU build: the default install also fetches the CUDA and Vulkan builds (700 MB).
            done = subprocess.run([npm, "install", "--no-save", "--no-audit", "--no-fund", "--omit=optional", "-E",
                                   "--prefix", str(FOLDER),
                                   f"node-llama-cpp@{VERSION}", f"{_platform_package()}@{VERSION}"],
                                  cwd=FOLDER, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise RuntimeError(f"npm install node-llama-cpp@{VERSION} failed:\n{done.stdout}\n{done.stderr}")
    return binaries


class _Message(ctypes.Structure):
    _fields_ = [("role", ctypes.c_char_p), ("content", ctypes.c_char_p)]


class LlamaCpp:
    """llama.cpp, ready to read a GGUF file."""

    def __init__(self, binaries: Path):
        self.binaries = binaries
        library = next(binaries.rglob("libllama*.so"))  # beside libggml*, which it finds through its RUNPATH
        self._lib = ctypes.CDLL(str(library))
        apply = self._lib.llama_chat_apply_template
        apply.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Message), ctypes.c_size_t, ctypes.c_bool, ctypes.c_char_p,
                          ctypes.c_int32]
        apply.restype = ctypes.c_int32
        self._apply = apply

    def read(self, gguf: Path, texts=(), prompts=(), max_tokens: int = 32) -> dict:
        """What llama.cpp makes of ``gguf``: {bos, eos, eot, prepends_bos, texts: [ids...], replies: [{tokens,
        text}], log: what it printed while loading}."""
        request = json.dumps({"model": str(gguf), "texts": list(texts), "prompts": list(prompts),
                              "max_tokens": max_tokens})
        done = subprocess.run(["node", str(PROBE)], input=request, capture_output=True, text=True, cwd=FOLDER,
                              timeout=300)
        assert done.returncode == 0, f"llama.cpp could not read {gguf}:\n{done.stderr[-3000:]}"
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["log"] = done.stderr
        return result

    def render(self, template: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """``messages`` rendered by llama.cpp's built-in chat-template engine from ``template`` (it recognises the
        model's format from the template's text)."""
        chat = (_Message * len(messages))(*[_Message(m["role"].encode(), m["content"].encode()) for m in messages])
        size = 4096
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self._apply(template.encode(), chat, len(messages), add_generation_prompt, buf, size)
            assert n >= 0, "llama.cpp does not know this chat template"
            if n <= size:
                return buf.raw[:n].decode("utf-8")
            size = n + 1
