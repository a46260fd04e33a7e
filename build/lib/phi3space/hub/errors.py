"""Retries for transient Hub failures, and the one place where Hub errors become messages a person can act on."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

from phi3space.errors import AuthError, HubError, JobsError, Phi3SpaceError, scrub

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """5xx, 429, timeouts, refused or reset connections: worth another try."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        status = http_status(exc)
        return status is not None and (status >= 500 or status in (408, 429))
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    name = type(exc).__name__
    return any(k in name for k in ("ConnectError", "Timeout", "RemoteProtocolError", "ReadError", "WriteError",
                                   "NetworkError", "LocalEntryNotFound"))


def retry_base_s() -> float:
    """The first wait before asking the Hub (or Jobs) again after a transient failure: PHI3SPACE_RETRY_BASE_S, default
    2 s; each later wait doubles it."""
    return float(os.environ.get("PHI3SPACE_RETRY_BASE_S", "2"))


def with_retries(fn: Callable[[], T], what: str, attempts: int = 4, on_retry: Callable[[str], None] | None = None) -> T:
    """Call ``fn``; retry transient failures with exponential backoff (base ``retry_base_s()``)."""
    base = retry_base_s()
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
    """The first line of a failure, with its HTTP status, secrets scrubbed, at most 300 characters."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return scrub(f"HTTP {status}: {first}" if status and str(status) not in first else first)[:300]


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
    """The error for a gated repo: whose terms to accept, and where."""
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


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a failed Hub call, else None."""
    return getattr(getattr(exc, "response", None), "status_code", None)


BILLING_URL = "https://huggingface.co/settings/billing"


def jobs_refusal(exc: BaseException, namespace: str, check_hint: str) -> Phi3SpaceError | None:
    """Hugging Face Jobs' refusal to start a job, with its own words and what to do (``check_hint``: which settings
    to check for a malformed request); None for a bug."""
    from huggingface_hub.errors import HfHubHTTPError

    if not isinstance(exc, HfHubHTTPError):
        return hub_error(exc, "start the job on Hugging Face Jobs")
    status = http_status(exc)
    said = scrub((getattr(exc, "server_message", None) or str(exc).splitlines()[0]).strip())
    prefix = f"Hugging Face Jobs refused to start the job ({status}: {said})"
    if status == 402:
        return JobsError(prefix, f"Jobs are billed to the account that runs them: add a payment method or credits for "
                                 f"{namespace} at {BILLING_URL}, then submit again.")
    if status == 403:
        return AuthError(prefix, "On a Space, sign out and in again so the app may run jobs for you (scope 'jobs'); "
                                 "with a token, use one that may start Jobs in that namespace.")
    if status == 429:
        return JobsError(prefix, "You have reached a limit of Jobs at once: wait for one of your jobs to end, or "
                                 "cancel one, then submit again.")
    if status in (400, 404, 422):
        return JobsError(prefix, check_hint)
    return hub_error(exc, "start the job on Hugging Face Jobs")
