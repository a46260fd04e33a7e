"""Hugging Face Hub access: whose token, may it push there, is a name a Hub ID or a path, retries for transient
failures, and the one place where Hub errors become messages a person can act on.

All HTTP goes through huggingface_hub; nothing here builds a request by hand.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .errors import AuthError, HubError, Phi3SpaceError, register_secret, scrub

MOCK_TOKEN = "mock-oauth-token-for-local-dev"  # what gradio injects off a Space: not a token
T = TypeVar("T")


def on_space() -> bool:
    """True inside a Hugging Face Space, decided as gradio decides it: SYSTEM=spaces and a SPACE_ID (a SPACE_ID
    alone, e.g. copied into a developer's shell, is not a Space)."""
    return os.environ.get("SYSTEM") == "spaces" and bool(os.environ.get("SPACE_ID"))


def space_id() -> str | None:
    """owner/name of the Space this app runs in; None elsewhere."""
    return os.environ.get("SPACE_ID") if on_space() else None


# Names ending like this are files, never Hub IDs (a Hub ID has no such suffix in practice).
FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".yaml", ".yml", ".txt", ".safetensors")


def is_local_ref(ref: str) -> bool:
    """The one rule for "a path on this machine, or a Hub ID?": a path exists here, starts like one (/ . ~), has
    more than one '/', or ends like a file; everything else (owner/name, or a bare legacy name) is a Hub ID."""
    ref = (ref or "").strip()
    return (ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or ref.lower().endswith(FILE_SUFFIXES)
            or Path(ref).expanduser().exists())


def is_hub_id(ref: str) -> bool:
    """'owner/name' that is not a path on this machine."""
    return bool(ref) and ref.count("/") == 1 and not is_local_ref(ref)


def resolve_token(explicit: str | None = None) -> str | None:
    """The caller's token (the web app passes the visitor's OAuth token), else HF_TOKEN, else the saved login."""
    token = explicit if explicit and explicit != MOCK_TOKEN else None
    if token is None:
        from huggingface_hub import get_token

        token = os.environ.get("HF_TOKEN") or get_token()
    register_secret(token)
    return token


_owner_token: str | None = None


def keep_owner_token_out(space: bool | None = None) -> str | None:
    """On a Space, the owner's HF_TOKEN must never ride along on a visitor's Hub calls, even those a library makes
    without passing a token (transformers lists a model's files that way while loading it). The token leaves the
    environment (kept here for the owner's own operations: the idle pause, the bucket copy) and implicit tokens are
    switched off. app.py calls it before huggingface_hub is imported; the job runner again. Returns the owner's token."""
    global _owner_token
    if not (on_space() if space is None else space):
        return None
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        _owner_token = os.environ.pop(name, None) or _owner_token
    os.environ["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
    os.environ["HF_TOKEN_PATH"] = os.path.join(os.environ.get("TMPDIR", "/tmp"), "phi3space-no-token", "token")
    register_secret(_owner_token)
    return _owner_token


def owner_token() -> str | None:
    """The Space owner's token, for the owner's own operations only (never a visitor's work)."""
    return _owner_token


def is_transient(exc: BaseException) -> bool:
    """5xx, 429, timeouts, refused or reset connections: worth another try."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        status = getattr(exc.response, "status_code", None)
        return status is not None and (status >= 500 or status in (408, 429))
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    name = type(exc).__name__
    return any(k in name for k in ("ConnectError", "Timeout", "RemoteProtocolError", "ReadError", "WriteError",
                                   "NetworkError", "LocalEntryNotFound"))


def with_retries(fn: Callable[[], T], what: str, attempts: int = 4, on_retry: Callable[[str], None] | None = None) -> T:
    """Call ``fn``; retry transient failures with exponential backoff (base PHI3SPACE_RETRY_BASE_S, default 2 s)."""
    base = float(os.environ.get("PHI3SPACE_RETRY_BASE_S", "2"))
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or attempt == attempts:
                raise
            delay = base * 2 ** (attempt - 1)
            if on_retry:
                on_retry(f"{what} failed ({scrub(short_error(exc))}); retry {attempt}/{attempts - 1} in {delay:g}s")
            time.sleep(delay)
    raise AssertionError("unreachable")


def short_error(exc: BaseException) -> str:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return scrub(f"HTTP {status}: {first}" if status and str(status) not in first else first)[:300]


WHOAMI_TTL_S = 300
_whoami_cache: dict[str, tuple[float, dict]] = {}  # sha256(token) -> (time, answer); never the token itself
_whoami_lock = threading.Lock()


def whoami(token: str | None) -> dict:
    """The token's user (name, orgs, role), asked of the Hub at most once per WHOAMI_TTL_S per token.

    Raises:
        AuthError: no token, or the Hub refuses it.
    """
    if token:
        key = hashlib.sha256(token.encode()).hexdigest()
        with _whoami_lock:
            cached = _whoami_cache.get(key)
        if cached and time.time() - cached[0] < WHOAMI_TTL_S:
            return cached[1]
        user = _ask_whoami(token)
        with _whoami_lock:
            _whoami_cache[key] = (time.time(), user)
        return user
    return _ask_whoami(token)


def _ask_whoami(token: str | None) -> dict:
    if not token:
        raise AuthError("no Hugging Face token: pushing to the Hub needs one",
                        "Sign in with Hugging Face (web app), set HF_TOKEN, or run `hf auth login`; "
                        "or leave output.push_to empty to keep the adapter local.")
    from huggingface_hub import HfApi

    return call(lambda: HfApi().whoami(token=token), "check the token", HubError)


def hub_error(exc: BaseException, what: str, ref: str | None = None,
              error: type[Phi3SpaceError] = HubError) -> Phi3SpaceError | None:
    """The one mapping from a Hub failure to a message and a hint; None for an exception that is not a Hub
    failure (a bug, which keeps its traceback). ``what`` names the operation, ``ref`` the repo it was about."""
    from huggingface_hub import errors as hub_errors

    name = ref or "the repo"
    if isinstance(exc, Phi3SpaceError):
        return exc
    if isinstance(exc, hub_errors.GatedRepoError):
        return gated(ref, error)
    if isinstance(exc, (hub_errors.RepositoryNotFoundError, hub_errors.RevisionNotFoundError)):
        return error(f"{name} was not found (or it is private)",
                     "Check the ID (owner/name) and its spelling; sign in or set HF_TOKEN if it is private.")
    if isinstance(exc, hub_errors.HfHubHTTPError):
        status = getattr(exc.response, "status_code", None)
        if status == 401:
            return AuthError(f"{what}: the Hugging Face token was refused (401: invalid or expired)",
                             "Sign in again, or create a token at https://huggingface.co/settings/tokens and set HF_TOKEN.")
        if status == 403:
            return AuthError(f"{what}: the Hub refused it ({short_error(exc)})",
                             "Check that your token has write access to that namespace (for an organisation, that "
                             "you granted this app access to it when signing in).")
        return error(f"{what} failed: {short_error(exc)}", "Try again in a moment.")
    if is_transient(exc):
        return error(f"{what}: could not reach the Hub ({short_error(exc)})",
                     "Check the network (or HF_ENDPOINT) and try again.")
    if isinstance(exc, (OSError, ValueError)):  # transformers and peft report a missing repo or file like this
        return error(f"{what} failed: {short_error(exc)}",
                     "Check the ID or folder (owner/name, or a folder with the expected files) and the network.")
    return None


def gated(ref: str | None, error: type[Phi3SpaceError] = HubError) -> Phi3SpaceError:
    page = f"https://huggingface.co/{ref}" if ref else "the repo's page"
    return error(f"{ref or 'the repo'} is gated: its owner asks users to accept terms first",
                 f"Open {page}, accept the terms, and sign in (or set HF_TOKEN).")


def call(fn: Callable[[], T], what: str, error: type[Phi3SpaceError] = HubError, ref: str | None = None,
         on_retry: Callable[[str], None] | None = None, attempts: int = 4) -> T:
    """``fn`` with retries for transient failures; a final failure becomes a typed error (see ``hub_error``)."""
    try:
        return with_retries(fn, what, attempts=attempts, on_retry=on_retry)
    except Exception as exc:
        mapped = hub_error(exc, what, ref, error)
        if mapped is None:
            raise
        raise mapped from None


def check_read_access(repo_id: str, repo_type: str, token: str | None) -> None:
    """Ask the Hub whether ``token`` may read ``repo_id`` (raises RepositoryNotFoundError / GatedRepoError).

    The libraries fall back to their local cache when the Hub refuses a download, so on a shared server a private
    repo cached for one visitor would open for the next one without this check. When the Hub cannot be reached,
    a Space refuses (fail closed) and a personal machine goes on to its cache (offline work keeps working).
    """
    from huggingface_hub import auth_check, constants

    if constants.HF_HUB_OFFLINE:
        return
    shared = on_space()
    try:
        with_retries(lambda: auth_check(repo_id, repo_type=repo_type, token=token or False), "access check",
                     attempts=4 if shared else 1)
    except Exception as exc:
        if shared or not is_transient(exc):
            raise


def namespaces(user: dict) -> list[str]:
    return [user["name"]] + [o["name"] for o in user.get("orgs", []) if o.get("name")]


def check_push_access(push_to: str, token: str | None, auto_name: str, private: bool = True) -> str:
    """Resolve ``push_to`` ('auto' -> <user>/<auto_name>) and prove the token may write there, the way the Hub
    will judge the push: ``create_repo(exist_ok=True)``, then ``auth_check(write=True)``. An organisation the token
    was not granted (an OAuth sign-in picks organisations at consent), or a read-only membership, is refused here,
    in seconds, before any weights load.

    Raises:
        AuthError: no token, refused token, read-only token, a namespace that is not the user's or an org's, or no
            write access to the repo.
    """
    user = whoami(token)
    repo_id = f"{user['name']}/{auto_name}" if push_to == "auto" else push_to
    role = ((user.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise AuthError("the Hugging Face token is read-only and cannot create repos or push",
                        "Use a token with write access (https://huggingface.co/settings/tokens).")
    namespace = repo_id.split("/")[0]
    if namespace not in namespaces(user):
        raise AuthError(f"cannot push to {repo_id}: {namespace!r} is not your account ({user['name']}) or one of your organisations",
                        f"Push to {user['name']}/{repo_id.split('/')[-1]}, or set output.push_to: auto.")
    prove_write_access(repo_id, token, private)
    return repo_id


def prove_write_access(repo_id: str, token: str | None, private: bool = True) -> None:
    """Create the repo if needed and ask the Hub whether ``token`` may write to it.

    Raises:
        AuthError: the Hub refuses (no rights in that namespace, an organisation not granted to this sign-in).
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token or False)
    hint = (f"Check that you may write to {repo_id.split('/')[0]}: for an organisation, a write role in it and, when "
            "signing in on a Space, that you granted this app access to it at the consent screen (sign out, sign in "
            "again and tick it); or push to your own account.")
    try:
        call(lambda: api.create_repo(repo_id, private=private, exist_ok=True), "create repo", ref=repo_id)
        call(lambda: api.auth_check(repo_id, write=True), "check write access", ref=repo_id)
    except AuthError as exc:
        raise AuthError(f"cannot push to {repo_id}: {exc.message}", hint) from None


def base_license(base: str, token: str | None) -> str | None:
    """The base model's licence from its Hub model card, for the adapter's card (None when unknown or local)."""
    if not is_hub_id(base):
        return None
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(base, token=token).data.license
    except Exception:  # the licence is a nicety; a push must not fail for it
        return None
