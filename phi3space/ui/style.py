"""The page's own CSS and script, in one place: launch_kwargs() hands them to gradio (app.py and the tests' app).

CSS: nothing wider than a phone's screen (wide things wrap or scroll inside their own box), titles and headers that
keep their words whole, checkboxes with room for their label. Script: the log box follows its newest line unless the
reader has scrolled up. (Upload boxes keep gradio's own height: a fixed one cuts off "Click to Upload".)
"""

CSS = """
/* The page never scrolls sideways: wide content wraps, or scrolls inside its own box. */
#header { flex-wrap: wrap; align-items: center; row-gap: 4px; }
#header > div:first-child { flex: 1 1 320px; min-width: 0; }
#header h1 { font-size: clamp(1.35rem, 4.5vw, 2rem); line-height: 1.25; overflow-wrap: break-word; }
#local-mode, #header .login { flex: 0 1 auto; }
#local-mode p { font-size: var(--text-sm); color: var(--body-text-color-subdued); }

/* The inspection report wraps its long lines (paths) instead of running off the side (the config preview is a code
   editor: it scrolls sideways inside its own box). */
#inspection-report pre, #inspection-report code { white-space: pre-wrap; overflow-wrap: anywhere; }
#inspection-report { max-width: 100%; overflow-x: auto; }
/* The example's "trained" tag stays on one line. */
#example .label, #example [class*="label"] { white-space: nowrap; }

/* Tables keep their header words whole and scroll sideways inside their box on a narrow screen. */
#eval-summary th, #eval-summary td:not(:first-child) { white-space: nowrap; }
.plan-table { max-width: 100%; overflow-x: auto; }
.plan-options th, .plan-options td { white-space: nowrap; padding: 2px 8px; }
#runs-table th, #runs-table th * { white-space: nowrap; word-break: normal; overflow-wrap: normal; }
#runs-table .table-wrap, #runs-table .table-container { overflow-x: auto; max-width: 100%; }
/* A cell breaks a word only when it cannot fit on a line of its own (a status or a loss stays whole). */
#runs-table .cell-wrap span { word-break: normal; overflow-wrap: break-word; font-size: var(--text-xs); }

/* A dropdown's text stops before its arrow (a long value, such as a model folder, ran under it). */
.secondary-wrap input { padding-right: 26px !important; text-overflow: ellipsis; }

/* The chat's "Adapter" / "Base model" label sits above the replies, not floating over the first one. */
#chat-adapter-replies label.float, #chat-base-replies label.float { position: static; margin-bottom: 4px; }

/* On a phone: shorter help text, log and chart, so the page is not a long scroll. */
@media (max-width: 640px) {
  .info-text { font-size: var(--text-xs); line-height: 1.3; }
  #job-log textarea { max-height: 11em; }
  #loss-plot { max-height: 300px; }
  #data-upload .wrap { min-height: 0; }
}

/* Checkboxes keep room for their label (gradio gives a checkbox no minimum width in a row of fields). */
.switch { min-width: min(150px, 100%) !important; }
.switch .label-text { white-space: normal; word-break: normal; overflow-wrap: normal; }
"""

# Runs once when the page loads. gradio's own autoscroll misses a non-interactive box whose text is replaced on
# every poll, so the log box is followed here: to its end after each change, unless the reader scrolled up.
JS = """
() => {
  const following = new WeakMap();
  const shown = new WeakMap();
  setInterval(() => {
    for (const box of document.querySelectorAll('#job-log textarea')) {
      if (!following.has(box)) {
        following.set(box, true);
        box.addEventListener('scroll', () => {
          following.set(box, box.scrollTop + box.clientHeight >= box.scrollHeight - 4);
        });
      }
      if (shown.get(box) !== box.value) {
        shown.set(box, box.value);
        if (following.get(box)) box.scrollTop = box.scrollHeight;
      }
    }
  }, 200);
}
"""
