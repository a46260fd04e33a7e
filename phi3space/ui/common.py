"""The one place where our typed errors become gr.Error (a readable message in the page, no traceback).

The page shows a gr.Error as HTML, so the page's errors are escaped (a message may quote a dataset's column names or
a path); the API's are plain text for gradio_client (api.py uses ``api_errors``).
"""

from __future__ import annotations

import functools
import html
import inspect
import re

import gradio as gr

from phi3space.errors import Phi3SpaceError, SignInNeeded

# Page events are not API endpoints: the API is /submit_job, /job_status, /cancel_job, /resume_job and /chat (api.py).
UI_ONLY = "private"


SIGN_IN = "Press 'Sign in with Hugging Face' at the top of the page"


def as_gr_error(exc: Phi3SpaceError, for_html: bool = True) -> gr.Error:
    """``exc`` as the gr.Error a person sees: its message, its hint (for sign-in, how to sign in on the page) and
    a title by its kind; ``for_html``: escaped, as a page shows it."""
    hint = f"{SIGN_IN}: {exc.why}" if isinstance(exc, SignInNeeded) and exc.why else \
        f"{SIGN_IN}." if isinstance(exc, SignInNeeded) else exc.hint
    text = exc.message + (f"\n\nHint: {hint}" if hint else "")
    return gr.Error(html.escape(text, quote=False) if for_html else text,
                    title=f"{exc.kind.capitalize()} problem" if exc.kind != "error" else "Error",
                    duration=None, print_exception=False)


def page_text(text: str) -> str:
    """Text for gr.Info / gr.Warning, which the page shows as HTML."""
    return html.escape(text, quote=False)


def code_block(text: str) -> str:
    """``text`` as a markdown code block whose fence no backticks in the text can close (it quotes dataset and
    config text)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def _wrap(fn, for_html: bool):
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Phi3SpaceError as exc:
                raise as_gr_error(exc, for_html) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Phi3SpaceError as exc:
            raise as_gr_error(exc, for_html) from None
    return wrapper


def user_errors(fn):
    """Show Phi3SpaceError raised by a page handler (plain or generator) as a gr.Error (escaped: shown as HTML)."""
    return _wrap(fn, for_html=True)


def api_errors(fn):
    """The same for an API endpoint: the message stays plain text for gradio_client."""
    return _wrap(fn, for_html=False)


def hub_destination(box: str, space: bool, placeholder: str) -> tuple[gr.Checkbox, gr.Textbox, gr.Checkbox]:
    """'Push to the Hub' (on, and fixed, on a Space), the destination repo and 'Private repo', in the row being
    built (elem_ids ``box``-push, ``box``-repo, ``box``-private)."""
    push = gr.Checkbox(value=space, label="Push to the Hub", interactive=not space, scale=1, elem_id=f"{box}-push",
                       elem_classes=["switch"], min_width=140)
    repo = gr.Textbox(label="Destination repo", placeholder=placeholder, scale=3, elem_id=f"{box}-repo", min_width=200)
    private = gr.Checkbox(value=True, label="Private repo", scale=1, elem_id=f"{box}-private", elem_classes=["switch"])
    return push, repo, private
