"""Chat fairness across accounts, through the app's API: two signed-in accounts each hold two replies as long as they
may be (1,024 tokens), and a third account asks a short question. Prints JSON: the third visitor's time to its first
token and to its whole reply, alone and beside the long ones, with /chat's concurrency as it is now (the engine's
batch, MAX_BATCH) and as it was (gradio's default of 4).

    python bench/chat_fairness.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from hub_server import HubServer  # noqa: E402  (the tests' Hub stand-in: signed-in accounts need a whoami)

HUB = HubServer().start()
os.environ.update(HF_ENDPOINT=HUB.url, HF_HUB_DISABLE_TELEMETRY="1", GRADIO_ANALYTICS_ENABLED="False")
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="phi3space-bench-hf-")

import common  # noqa: E402

TOKENS = {"ann": "hf_AnnBenchLong0123456789abcdef", "ben": "hf_BenBenchLong0123456789abcdef",
          "cat": "hf_CatBenchShort0123456789abcde"}


def ask(c, adapter: str, message: str, max_new_tokens: int) -> dict:
    """Time to the first streamed text and to the whole reply."""
    t0 = time.time()
    job = c.submit(adapter, message, "", max_new_tokens, api_name="/chat")
    while not job.outputs():
        time.sleep(0.005)
    first = time.time() - t0
    job.result(timeout=600)
    return {"first_token_s": round(first, 3), "reply_s": round(time.time() - t0, 3)}


def measure(concurrency: dict, base: str, adapter: str, rounds: int) -> dict:
    import gradio_client
    from ui_app import running_app

    from phi3space.ui import chat_service

    saved = dict(chat_service.CHAT_CONCURRENCY)
    chat_service.CHAT_CONCURRENCY.clear()
    chat_service.CHAT_CONCURRENCY.update(concurrency)  # read when the page and the API are built
    alone, beside = [], []
    try:
        with running_app(tempfile.mkdtemp(prefix="phi3space-bench-data-")) as (url, _):
            clients = {name: gradio_client.Client(url, oauth_token=token, verbose=False) for name, token in TOKENS.items()}
            ask(clients["cat"], adapter, "Warm up.", 8)
            for _ in range(rounds):
                alone.append(ask(clients["cat"], adapter, "Say hello.", 8))
                long = [clients[n].submit(adapter, f"Tell me everything ({i}).", "", 1_000_000, api_name="/chat")
                        for n in ("ann", "ben") for i in range(2)]
                while not all(j.outputs() for j in long) and not any(j.done() for j in long):
                    time.sleep(0.01)
                beside.append({**ask(clients["cat"], adapter, "Say hello.", 8),
                               "long_replies_still_running": sum(not j.done() for j in long)})
                for j in long:
                    j.result(timeout=600)
    finally:
        chat_service.CHAT_CONCURRENCY.clear()
        chat_service.CHAT_CONCURRENCY.update(saved)
    med = lambda rows, k: round(statistics.median(r[k] for r in rows), 3)  # noqa: E731
    return {"alone": {"first_token_s": med(alone, "first_token_s"), "reply_s": med(alone, "reply_s")},
            "beside_4_long": {"first_token_s": med(beside, "first_token_s"), "reply_s": med(beside, "reply_s"),
                              "worst_first_token_s": max(r["first_token_s"] for r in beside)},
            "rounds": beside}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=sorted(common.SHAPES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="also write the JSON here (e.g. bench/results/cpu-chat-fairness.json)")
    a = parser.parse_args()
    from chat_serving import make_adapter

    from phi3space.chat.engine import MAX_BATCH

    for name, token in TOKENS.items():
        HUB.add_user(name, token)
    work = Path(tempfile.mkdtemp(prefix="phi3space-bench-"))
    base = common.build_phi3(work / "base", a.model)
    adapter = str(make_adapter(base, work / "adapter"))
    out = {"benchmark": "chat_fairness", "machine": common.machine(), "model": a.model,
           "now": {"concurrency_limit": MAX_BATCH, **measure({"concurrency_limit": MAX_BATCH, "concurrency_id": "chat"},
                                                             str(base), adapter, a.rounds)},
           "before": {"concurrency_limit": 4, **measure({}, str(base), adapter, a.rounds)}}
    common.emit(out, a.out)


if __name__ == "__main__":
    main()
