"""``python -m phi3space plan CONFIG``: before a run, a measured plan (phi3space.jobs.plan): a few steps of the real
training here, then its peak memory against what there is, its speed, whether it fits (and if not, the settings that
would make it fit), and for here and each Hugging Face Jobs flavor the time and the price, each with its error.

The stages go to stderr as they happen; the plan to stdout, as lines to read or (``--json``) one JSON object."""

from __future__ import annotations

import json
import sys

from phi3space.cli.common import quiet_libraries, set_argument
from phi3space.hub.auth import resolve_token
from phi3space.jobs import spec
from phi3space.jobs.plan import make_plan
from phi3space.report import fmt_duration

GB = 1e9


def make_parser(subparsers) -> None:
    """Add ``plan`` to ``subparsers``."""
    p = subparsers.add_parser("plan", help="measure a run before it starts: memory, speed, fits, time and price where")
    p.add_argument("config", help="YAML run config (as train takes it)")
    set_argument(p)
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.set_defaults(func=main)


def main(args) -> int:
    """Plan ``args.config`` as ``train`` would load it, and print the plan."""
    cfg = spec.load(args.config, args.set or [])
    quiet_libraries()
    plan = make_plan(cfg, resolve_token(), progress=lambda text: print(f"plan: {text}", file=sys.stderr, flush=True))
    print(json.dumps(plan) if args.json else "\n".join(lines(plan)))
    return 0


def lines(plan: dict) -> list[str]:
    """The plan in readable lines: what was measured, whether it fits, and a table of where it could run."""
    out = [f"measured here ({plan['hardware']}): {plan['probe_steps']} steps on {plan['rows']} rows of "
           f"{plan['mean_row_tokens']:g} tokens on average (longest {plan['longest_row_tokens']})",
           f"peak memory: {_gb(plan['peak_memory_bytes'])} of {_gb(plan['memory_available_bytes'])} available "
           f"({plan['memory_source']})",
           f"speed: {plan['tokens_per_s'] or '?'} tokens/s"]
    if plan["fits"]:
        out.append(f"fits here: yes; the whole run ({plan['tokens']:,} tokens) about {fmt_duration(plan['eta_s'])}")
    else:
        problem = next((p["problem"] for p in plan["probes"] if p["problem"]), None)
        out.append("fits here: no" + (f" ({problem})" if problem else ""))
        fix = plan["settings_that_fit"]
        out.append(f"it fits with: {' '.join(f'--set {k}={v}' for k, v in fix.items())}" if fix else
                   "nothing tried fits here: choose a larger GPU below")
    out += ["", "where          time       price     fits  error  hardware"]
    for o in plan["options"]:
        price = f"${o['cost_usd']:.2f}" if o["cost_usd"] is not None else "-"
        out.append(f"{o['flavor']:<14} {fmt_duration(o['eta_s']):<10} {price:<9} {'yes' if o['fits'] else 'no':<5} "
                   f"±{o['error']:.0%}{'':<2} {o['hardware']}")
    return out


def _gb(n: int | None) -> str:
    return f"{n / GB:.2f} GB" if n else "? GB"
