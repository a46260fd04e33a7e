"""Readable text for events and durations: the CLI's progress lines and the page's log."""

from __future__ import annotations


def fmt_duration(seconds: float | None) -> str:
    """ETA as m:ss, or h:mm:ss from an hour up."""
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def format_event(e: dict) -> str | None:
    """One readable line per event, or None for events the CLI does not print."""
    kind = e["type"]
    if e.get("task") in ("merge", "eval", "export", "plan"):  # a job of stages (or rows), not of steps and losses
        return _format_stage_event(e)
    if kind == "progress":
        parts = [f"step {e.get('step')}/{e.get('max_steps') or '?'}", f"epoch {e.get('epoch') or 0:.2f}",
                 f"loss {e.get('loss') or float('nan'):.4f}"]
        if e.get("learning_rate") is not None:
            parts.append(f"lr {e['learning_rate']:.2e}")
        if e.get("grad_norm") is not None:
            parts.append(f"grad {e['grad_norm']:.3f}")
        if e.get("reward_accuracy") is not None:
            parts.append(f"reward acc {e['reward_accuracy']:.2f} margin {e.get('reward_margin') or 0:.3f}")
        if e.get("tokens_per_s"):
            parts.append(f"{e['tokens_per_s']:.0f} tok/s")
        parts.append(f"eta {fmt_duration(e.get('eta_s'))}")
        return " | ".join(parts)
    if kind == "eval":
        head = f"eval  step {e.get('step')} | eval_loss {e.get('eval_loss') or float('nan'):.4f} | "
        if e.get("eval_reward_accuracy") is not None:
            return head + f"reward acc {e['eval_reward_accuracy']:.2f} margin {e.get('eval_reward_margin') or 0:.3f}"
        return head + f"perplexity {e.get('perplexity')}"
    if kind == "run_started":
        d = e.get("dataset", {})
        resumed = f" (resumed from {e['resumed_from']})" if e.get("resumed_from") else ""
        return (f"run started{resumed}: {e.get('hardware')} | {d.get('format')} data, {d.get('train_rows')} train rows, "
                f"{d.get('eval_rows')} eval rows | {e.get('trainable_params') or 0:,} trainable params "
                f"({e.get('trainable_pct') or 0:.3f}%) | {e.get('max_steps')} steps")
    if kind == "checkpoint":
        return f"checkpoint saved: {e.get('path')}"
    if kind == "push":
        return f"pushed {e.get('what', 'adapter')} to {e.get('url')} (commit {str(e.get('commit'))[:10]})"
    if kind == "run_finished":
        m = e.get("metrics") or {}
        loss = f", eval_loss {m['eval_loss']:.4f}" if m.get("eval_loss") is not None else ""
        return f"run {e.get('status')} at step {e.get('step')}{loss}; adapter: {e.get('adapter') or 'none'}"
    if kind == "log":
        return e.get("message")
    if kind == "general_check":
        return f"general skills: {e.get('verdict')}" + "".join(f"\n  lost: {x}" for x in e.get("lost_questions") or [])
    if kind == "push_held":
        return f"push held: {e.get('message')}\nhint: {e.get('hint')}"
    return None


def _format_stage_event(e: dict) -> str | None:
    kind, task = e["type"], e["task"]
    if kind == "run_started":
        return f"{task} started: {e.get('adapter')}" + (f" -> {e['push_to']}" if e.get("push_to") else "")
    if kind == "progress":
        return f"[{e.get('step')}/{e.get('max_steps')}] {e.get('stage')}"
    if kind == "evaluation":
        return "\n".join([f"evaluated on {e.get('rows')} rows of {e.get('dataset')}:"]
                         + [f"  {side:8s} " + " | ".join(_score(k, (e.get(side) or {}).get(k)) for k in
                                                          ("exact_match", "token_f1", "rouge_l", "loss", "ended_with_end"))
                            for side in ("base", "adapter")])
    if kind == "plan":
        return "\n".join(plan_lines(e))
    if kind == "export":
        return "wrote " + ", ".join(e.get("files") or [])
    if kind == "push":
        return f"pushed {e.get('what')} to {e.get('url')}"
    if kind == "log":
        return e.get("message")
    if kind == "run_finished":
        return f"{task} {e.get('status')}" + (f": {e['model']}" if e.get("model") else "")
    return None


def _score(name: str, value) -> str:
    return f"{name} {'n/a' if value is None else f'{value:.4f}'}"



def human_duration(seconds: float | None) -> str:
    """'45 min', '2 h 05 min', '3 d 4 h'."""
    if seconds is None:
        return "?"
    minutes = max(0, round(seconds / 60))
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours < 48 else f"{hours // 24} d {hours % 24} h"


GB = 1e9


PLAN_COLUMNS = ("where", "time", "price", "fits", "error", "hardware")


def plan_problem(plan: dict) -> str | None:
    """Why the run does not fit here as set (the first probe's problem), None when none said."""
    return next((p["problem"] for p in plan["probes"] if p.get("problem")), None)


def plan_option_cells(option: dict) -> tuple[str, ...]:
    """One row of a plan's table of where the run could run, as text, in PLAN_COLUMNS' order."""
    return (option["flavor"], fmt_duration(option["eta_s"]), fmt_price(option["cost_usd"]),
            "yes" if option["fits"] else "no", f"±{option['error']:.0%}", option["hardware"])


def plan_lines(plan: dict) -> list[str]:
    """A measured plan (phi3space.jobs.plan.make_plan's JSON) in readable lines: what was measured, whether it
    fits, and a table of where it could run."""
    out = [f"measured here ({plan['hardware']}): {plan['probe_steps']} steps on {plan['rows']} rows of "
           f"{plan['mean_row_tokens']:g} tokens on average (longest {plan['longest_row_tokens']})",
           f"peak memory: {fmt_gb(plan['peak_memory_bytes'])} of {fmt_gb(plan['memory_available_bytes'])} available "
           f"({plan['memory_source']})",
           f"speed: {plan['tokens_per_s'] or '?'} tokens/s"]
    if plan["fits"]:
        out.append(f"fits here: yes; the whole run ({plan['tokens']:,} tokens) about {fmt_duration(plan['eta_s'])}")
    else:
        problem = plan_problem(plan)
        out.append("fits here: no" + (f" ({problem})" if problem else ""))
        fix = plan["settings_that_fit"]
        out.append(f"it fits with: {' '.join(f'--set {k}={v}' for k, v in fix.items())}" if fix else
                   "nothing tried fits here: choose a larger GPU below")
    widths = (14, 10, 9, 5, 6, 0)
    out += ["", " ".join(f"{c:<{w}}" for c, w in zip(PLAN_COLUMNS, widths)).rstrip()]
    out += [" ".join(f"{c:<{w}}" for c, w in zip(plan_option_cells(o), widths)).rstrip() for o in plan["options"]]
    return out


def fmt_gb(n: int | None) -> str:
    """'12.30 GB' (decimal gigabytes), '? GB' when unknown."""
    return f"{n / GB:.2f} GB" if n else "? GB"


def fmt_price(usd: float | None) -> str:
    """'$1.25', or '-' where nothing is billed."""
    return f"${usd:.2f}" if usd is not None else "-"
