"""Volumes for the Jobs stand-in (tests/jobs_server.py): run_job's ``volumes`` as huggingface_hub 2.4 sends them
(``Volume.to_dict()``: ``type``, ``source``, ``mountPath``, optional ``revision``, ``readOnly``, ``path``).

What the service documents (docs/hub/jobs-configuration.md, "Volumes"): model, dataset and Space repos and storage
buckets can be mounted; repos are always mounted read-only (``readOnly`` is forced true for them), ``path`` mounts
a subfolder. What it answers for a malformed volume, or a repo, revision or subfolder that does not exist or that the
job's owner cannot read, is not documented: the stand-in's choice, UNVERIFIED, is to refuse the job at ``run_job``
(400 for a malformed volume; 404 "Repository not found" / "Invalid rev id" as the Hub's own routes answer, 403 for a
gated repo the token has no access to), so nothing is billed; a missing subfolder mounts as an empty folder.

A repo volume is materialised when the job is created: the files of that repo at that revision (under ``path`` if
given) are copied from the Hub stand-in's storage into a folder of the job (files read-only). The stand-in cannot
create ``/phi3space-code`` or any other absolute path, so it simulates the mount namespace by rewriting the job's
command, arguments and environment values: each mount path, where it is a whole path or starts one (not inside
another name), is replaced by the job's folder for that volume. Buckets are not simulated (400).
"""

import re
import stat
from pathlib import Path

TYPES = ("bucket", "model", "dataset", "space")
KEYS = {"type", "source", "mountPath", "revision", "readOnly", "path"}


class VolumeRefused(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def check(volumes):
    """The volumes of a run_job payload, normalised as inspect_job returns them (``readOnly`` true for repos).

    Raises:
        VolumeRefused: 400 for a malformed list or volume (unknown key, type, a mountPath not absolute, twice).
    """
    if volumes is None:
        return []
    if not isinstance(volumes, list):
        raise VolumeRefused(400, "volumes must be a list")
    out, seen = [], set()
    for i, vol in enumerate(volumes):
        where = f"volumes[{i}]"
        if not isinstance(vol, dict):
            raise VolumeRefused(400, f"{where} must be an object")
        if set(vol) - KEYS:
            raise VolumeRefused(400, f"{where}: unknown keys {sorted(set(vol) - KEYS)}")
        if vol.get("type") not in TYPES:
            raise VolumeRefused(400, f"{where}.type must be one of {', '.join(TYPES)}")
        if not isinstance(vol.get("source"), str) or not vol["source"].strip("/"):
            raise VolumeRefused(400, f"{where}.source must be a non-empty string")
        mount = vol.get("mountPath")
        if not isinstance(mount, str) or not mount.startswith("/") or mount.rstrip("/") == "":
            raise VolumeRefused(400, f"{where}.mountPath must be an absolute path (start with '/')")
        for key in ("revision", "path"):
            if key in vol and not isinstance(vol[key], str):
                raise VolumeRefused(400, f"{where}.{key} must be a string")
        if "readOnly" in vol and not isinstance(vol["readOnly"], bool):
            raise VolumeRefused(400, f"{where}.readOnly must be a boolean")
        if vol["type"] == "bucket" and "revision" in vol:
            raise VolumeRefused(400, f"{where}.revision is for repos, not buckets")
        mount = mount.rstrip("/")
        if mount in seen:
            raise VolumeRefused(400, f"{where}.mountPath {mount} is mounted twice")
        seen.add(mount)
        out.append({**vol, "mountPath": mount, **({"readOnly": True} if vol["type"] != "bucket" else {})})
    return out


def materialise(hub, volumes, user, token, folder):
    """Copy each repo volume's files into ``folder``/<n>; {mount path: that folder}.

    Raises:
        VolumeRefused: the repo or revision is not there or not readable with ``token`` (see the module's note).
    """
    mounts = {}
    for i, vol in enumerate(volumes):
        if vol["type"] == "bucket":
            raise VolumeRefused(400, "test hub: bucket volumes are not simulated")
        try:
            with hub._lock:
                repo = hub._get_repo(vol["type"], vol["source"], user, token)
                if repo.gated and not hub._allowed(repo, user, token):
                    raise VolumeRefused(403, f"Access to {vol['type']} {vol['source']} is restricted")
                files = dict(hub._resolve(repo, vol.get("revision") or "main")[-1].files)
        except VolumeRefused:
            raise
        except Exception as exc:  # the Hub stand-in's own refusal (_Err: RepoNotFound, RevisionNotFound)
            if not hasattr(exc, "status"):
                raise
            raise VolumeRefused(exc.status, f"volumes[{i}] ({vol['type']} {vol['source']}): {exc.message}") from None
        prefix = vol.get("path", "").strip("/")
        target = Path(folder) / str(i)
        target.mkdir(parents=True)
        for name, data in files.items():
            if prefix and not name.startswith(prefix + "/"):
                continue
            path = target / (name[len(prefix) + 1:] if prefix else name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)  # a read-only mount (root reads past it anyway)
        mounts[vol["mountPath"]] = str(target)
    return mounts


def remap(mounts, text):
    """``text`` with each mount path (where it starts a path) replaced by its folder: the simulated mount namespace."""
    for mount, target in sorted(mounts.items(), key=lambda m: -len(m[0])):
        text = re.sub(r"(?<![\w./-])" + re.escape(mount) + r"(?![\w.-])", lambda _m, t=target: t, text)
    return text
