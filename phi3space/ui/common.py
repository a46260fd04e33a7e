"""The one place where our typed errors become gr.Error (a readable message in the page, no traceback)."""

from __future__ import annotations

import functools
import html
import inspect

import gradio as gr

from ..errors import Phi3SpaceError

# Page events are not API endpoints: the API is /submit_job, /job_status, /cancel_job, /resume_job and /chat (api.py).
UI_ONLY = "private"


def as_gr_error(exc: Phi3SpaceError) -> gr.Error:
    # Messages quote dataset names, columns and paths a visitor chose: shown as text, never as HTML.
    text = html.escape(exc.message, quote=False) + (f"\n\nHint: {html.escape(exc.hint, quote=False)}" if exc.hint else "")
    return gr.Error(text, title=f"{exc.kind.capitalize()} problem" if exc.kind != "error" else "Error",
                    duration=None, print_exception=False)


def user_errors(fn):
    """Show Phi3SpaceError raised by a handler (plain or generator) as a gr.Error."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Phi3SpaceError as exc:
                raise as_gr_error(exc) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Phi3SpaceError as exc:
            raise as_gr_error(exc) from None
    return wrapper
