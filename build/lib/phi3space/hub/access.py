"""Hugging Face Hub access: whose token, may it push there, is a name a Hub ID or a path, retries for transient
failures, and the one place where Hub errors become messages a person can act on.

All HTTP goes through huggingface_hub; nothing here builds a request by hand.
"""

from __future__ import annotations

import hashlib
import threading
import time

from phi3space.config import unused_auto_name
from phi3space.errors import AuthError, HubError
from phi3space.hub.errors import call, is_transient, with_retries
from phi3space.hub.space import on_space
from phi3space.refs import is_hub_id

WHOAMI_TTL_S = 300
_whoami_cache: dict[str, tuple[float, dict]] = {}  # sha256(token) -> (time, answer); never the token itself
_whoami_lock = threading.Lock()


def whoami(token: str | None) -> dict:
    """The token's user (name, orgs, role), asked of the Hub at most once per WHOAMI_TTL_S per token; when the Hub
    cannot be reached, the last answer for that token stands (whose token it is does not change).

    Raises:
        AuthError: no token, or the Hub refuses it. HubError: the Hub cannot be reached and the token is new.
    """
    if token:
        key = hashlib.sha256(token.encode()).hexdigest()
        with _whoami_lock:
            cached = _whoami_cache.get(key)
        if cached and time.time() - cached[0] < WHOAMI_TTL_S:
            return cached[1]
        try:
            user = _ask_whoami(token)
        except HubError:
            if cached:
                return cached[1]
            raise
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

    return call(lambda: HfApi().whoami(token=token), "ask the Hub whose token this is", HubError)


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
    """Where ``user`` (a whoami answer) may own repos: their name, then their organisations."""
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
    repo_id = f"{user['name']}/{unused_auto_name(auto_name)}" if push_to == "auto" else push_to
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


def check_reachable(timeout_s: float = 3.0) -> None:
    """Ask the Hub once, without retries, whether it answers at all (any HTTP answer counts): a form that names Hub
    repos is refused in seconds when it does not, rather than after the retries meant for a Hub that blinks.

    Raises:
        HubError: no answer (offline, refused, timed out).
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout_s, follow_redirects=False)
    except Exception as exc:
        if not is_transient(exc):
            raise
        raise HubError(f"the Hugging Face Hub ({constants.ENDPOINT}) cannot be reached: {type(exc).__name__}",
                       "Check this machine's connection, or train on files here: a local dataset file or folder and "
                       "a local model folder (the demo's, with PHI3SPACE_DEMO=1).") from None
