"""What a Hugging Face job runs: the image, the volume with this code, and the shell command around
``python -m phi3space train``.

Off a Space, with no image of one's own, a job runs exactly this code: a wheel of the phi3space package this process
runs (its files as they are, a checkout or an installed copy), named by the hash of its content, is uploaded to the
run's destination repo on the branch ``phi3space-code`` under ``wheels/`` (a re-run of the same code reuses it); for
an eval of an adapter the user may not write to, to the user's own private ``<user>/phi3space-code`` instead
(``code_home``). The
job starts on a public PyTorch CUDA image with that folder mounted by the platform as a read-only volume
(``code_volumes``: the repo at that branch, subfolder ``wheels``, at ``/phi3space-code``), and pip-installs the wheel
from there with the project's requirements before training: no download of its own, no token for it. The start-up
cost is the image pull and the pip install of the requirements. On a Space the Space's own image (which has this
code) is used as it is; ``PHI3SPACE_JOBS_IMAGE`` names another image that has it.

Either way the trainer runs under a small ``sh`` wrapper that passes SIGTERM on (a cancel stops it cleanly) and
prints its exit code as ``@phi3space-exit N`` (an out-of-memory kill leaves 137), which the follower reads.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import io
import os
import re
import shlex
import zipfile
from dataclasses import dataclass
from pathlib import Path

from phi3space.hub.space import on_space
from phi3space.jobs.hf.protocol import CONFIG_ARG, EXIT_PREFIX

IMAGE_VAR = "PHI3SPACE_JOBS_IMAGE"
PUBLIC_IMAGE = "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime"  # CUDA 12.8 torch (requirements.txt: torch>=2.6)
CODE_BRANCH = "phi3space-code"
CODE_FOLDER = "wheels"  # the wheels' folder on that branch
CODE_MOUNT = "/phi3space-code"  # where a job finds that folder (a read-only volume)
CODE_REPO = "phi3space-code"  # the user's own repo for the wheel when a job's destination is not theirs to write


@dataclass(frozen=True)
class Code:
    """A wheel of this code on the Hub, for a job to install."""

    repo_id: str
    filename: str  # phi3space-0.3.0+<hash>-py3-none-any.whl


def job_image() -> str:
    """PHI3SPACE_JOBS_IMAGE, else (on a Space) the Space's own image, else the public PyTorch image (the job then
    installs this code first: ``ships_code``)."""
    image = os.environ.get(IMAGE_VAR, "").strip()
    if image:
        return image
    if on_space():
        return f"hf.co/spaces/{os.environ['SPACE_ID']}"
    return PUBLIC_IMAGE


def ships_code() -> bool:
    """Whether a job gets this code as a wheel (its image does not have it)."""
    return job_image() == PUBLIC_IMAGE


def image_has(package: str) -> bool:
    """Whether a job's image has ``package``: with this code's wheel, when the project's requirements name it; else
    (the Space's own image, or one named by PHI3SPACE_JOBS_IMAGE, taken to hold what this machine holds) when it is
    installed here."""
    if ships_code():
        names = (re.split(r"[\s\[<>=!~;(]", r.strip(), maxsplit=1)[0].lower() for r in _requirements(_package_root()))
        return package.lower() in names
    return importlib.util.find_spec(package) is not None


def launch_command(gpus: int, resume: bool = False, config_arg: str = CONFIG_ARG) -> list[str]:
    """The trainer's command: one process, or one per GPU under ``accelerate launch`` (data-parallel)."""
    train = ["-m", "phi3space", "train", config_arg] + (["--resume"] if resume else [])
    if gpus > 1:
        return ["accelerate", "launch", "--multi_gpu", "--num_processes", str(gpus), "--num_machines", "1", *train]
    return ["python", "-u", *train]


def task_command(argv: list[str]) -> list[str]:
    """An eval or export job's command: one process (``argv``: its ``python -m phi3space`` arguments)."""
    return ["python", "-u", "-m", "phi3space", *argv]


def job_command(gpus: int, resume: bool = False, code: Code | None = None, argv: list[str] | None = None) -> list[str]:
    """The job's command: install ``code`` when given, then the trainer (or, with ``argv``, that eval or export) under
    a wrapper that passes SIGTERM on and reports its exit code."""
    install = ""
    if code is not None:
        wheel = shlex.quote(f"{CODE_MOUNT}/{code.filename}")
        install = (f'set -e; echo "phi3space: installing {code.filename} from {code.repo_id} ({CODE_BRANCH}, '
                   f'mounted at {CODE_MOUNT})"; '
                   "python -m pip install --no-cache-dir --progress-bar off --disable-pip-version-check "
                   f"--root-user-action=ignore {wheel}; "
                   "set +e; ")
    train = shlex.join(task_command(argv) if argv is not None else launch_command(gpus, resume))
    wrapper = (f"{train} & child=$!; trap 'kill -TERM $child 2>/dev/null' TERM INT; wait $child; code=$?; "
               "while kill -0 $child 2>/dev/null; do wait $child; code=$?; done; "
               f'echo "{EXIT_PREFIX}$code"; exit $code')
    return ["sh", "-c", install + wrapper]


def code_volumes(code: Code | None) -> list:
    """The job's volumes for installing ``code``: the wheels' folder of its repo at the code branch, mounted read-only
    at CODE_MOUNT by the platform (huggingface_hub ``Volume``); none without ``code``."""
    if code is None:
        return []
    from huggingface_hub import Volume

    return [Volume(type="model", source=code.repo_id, revision=CODE_BRANCH, path=CODE_FOLDER, mount_path=CODE_MOUNT,
                   read_only=True)]


# ---------------------------------------------------------------- the wheel


def _package_root() -> Path:
    import phi3space

    return Path(phi3space.__file__).resolve().parent


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def _requirements(root: Path) -> list[str]:
    """The project's requirements: requirements.txt beside a checkout's package, else the installed metadata's."""
    listed = root.parent / "requirements.txt"
    if listed.is_file() and (root.parent / "pyproject.toml").is_file():
        lines = [line.split("#")[0].strip() for line in listed.read_text().splitlines()]
        return [line for line in lines if line and not line.startswith("-")]
    try:
        return [r for r in importlib.metadata.requires("phi3space") or [] if "extra ==" not in r]
    except importlib.metadata.PackageNotFoundError:
        return []


def _version() -> str:
    try:
        return importlib.metadata.version("phi3space").split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        import phi3space

        return phi3space.__version__


def build_wheel() -> tuple[str, bytes]:
    """(file name, bytes) of a wheel of the phi3space package this process runs; its local version is the hash of
    its files and requirements, so the same code always makes the same name."""
    root = _package_root()
    files, requires = _files(root), _requirements(root)
    digest = hashlib.sha256("\n".join(requires).encode())
    for path in files:
        digest.update(str(path.relative_to(root.parent)).encode() + b"\0" + path.read_bytes())
    version = f"{_version()}+{digest.hexdigest()[:12]}"
    info = f"phi3space-{version}.dist-info"
    meta = "\n".join(["Metadata-Version: 2.1", "Name: phi3space", f"Version: {version}", "Requires-Python: >=3.10",
                      *(f"Requires-Dist: {r}" for r in requires)]) + "\n"
    entries = [(str(p.relative_to(root.parent)), p.read_bytes()) for p in files]
    entries += [(f"{info}/METADATA", meta.encode()),
                (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: phi3space\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
                (f"{info}/entry_points.txt", b"[console_scripts]\nphi3space = phi3space.cli:main\n")]
    record = [f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
              for name, data in entries] + [f"{info}/RECORD,,"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in entries + [(f"{info}/RECORD", ("\n".join(record) + "\n").encode())]:
            wheel.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    return f"phi3space-{version}-py3-none-any.whl", buffer.getvalue()


def code_home(repo_id: str | None, token: str) -> str:
    """Where a job's wheel goes: ``repo_id`` (what the job pushes to) when the token may write there, else the user's
    own private ``<user>/phi3space-code`` (created if needed); either proven writable first.

    Raises:
        AuthError / HubError: the user may not write to their own namespace either, or the Hub cannot be asked.
    """
    from phi3space.errors import AuthError
    from phi3space.hub.access import check_push_access

    if repo_id:
        try:
            return check_push_access(repo_id, token, CODE_REPO)
        except AuthError:
            pass  # not theirs (an eval of someone else's adapter): their own repo then
    return check_push_access("auto", token, CODE_REPO, private=True)


def upload_code(repo_id: str, token: str, log=None) -> Code:
    """The wheel of this code in ``repo_id`` (branch phi3space-code), uploaded unless the same code is there.

    Raises:
        HubError / AuthError: the Hub refused or could not be reached.
    """
    from huggingface_hub import HfApi

    from phi3space.hub.errors import call

    api = HfApi(token=token)
    filename, data = build_wheel()
    path = f"{CODE_FOLDER}/{filename}"
    code = Code(repo_id, filename)
    call(lambda: api.create_branch(repo_id, branch=CODE_BRANCH, exist_ok=True), "create branch", ref=repo_id)
    if call(lambda: api.file_exists(repo_id, path, revision=CODE_BRANCH), "look for this code's wheel", ref=repo_id):
        if log:
            log(f"this code is on the Hub already ({repo_id}, branch {CODE_BRANCH}: {filename})")
        return code
    call(lambda: api.upload_file(path_or_fileobj=data, path_in_repo=path, repo_id=repo_id, revision=CODE_BRANCH,
                                 commit_message=f"phi3space code for Hugging Face Jobs ({filename})"),
         "upload this code's wheel", ref=repo_id)
    if log:
        log(f"uploaded this code ({len(data) // 1024} KiB) to {repo_id}, branch {CODE_BRANCH}: {filename}")
    return code
