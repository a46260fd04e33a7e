"""Chat is fair across accounts: two signed-in visitors who each hold their two allowed replies, as long as they may
be, do not keep a third visitor's short reply waiting. /chat runs as many replies at once as the engine batches
(MAX_BATCH), shared with the page; each visitor keeps their own cap."""

import time

import pytest
from helpers import client, running_app

gradio_client = pytest.importorskip("gradio_client")
pytestmark = pytest.mark.slow  # the app, and (fairness) a trained run
TOKENS = {"ann": "hf_AnnLongReplies0123456789abcd", "ben": "hf_BenLongReplies0123456789abcd",
          "cat": "hf_CatShortReply01234567890abcd"}


def _untrained_adapter(base, folder):
    """An adapter that rambles: random LoRA weights on the tiny model never say <|end|> early."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).save_pretrained(folder)
    return folder


def test_two_accounts_holding_long_replies_do_not_hold_up_a_third(hub, tiny_model, trained_run, tmp_path):
    for name, token in TOKENS.items():
        hub.add_user(name, token)
    rambler = str(_untrained_adapter(tiny_model, tmp_path / "rambler"))
    with running_app(tmp_path / "data") as (url, _):
        long = [client(url, TOKENS[name]).submit(rambler, f"Tell me everything, part {i}.", "", 1_000_000,
                                                  api_name="/chat") for name in ("ann", "ben") for i in range(2)]
        deadline = time.time() + 120
        while time.time() < deadline and not all(job.outputs() for job in long):
            time.sleep(0.02)
        assert all(job.outputs() for job in long), "the four long replies did not all start"
        with pytest.raises(gradio_client.exceptions.AppError, match="you already have 2 replies being written"):
            client(url, TOKENS["ann"]).predict(rambler, "A third one?", api_name="/chat")  # her cap holds
        short = client(url, TOKENS["cat"]).predict(str(trained_run), "What colour is a snarkle?", "", 8, api_name="/chat")
        assert short == "Bright teal."
        assert not any(job.done() for job in long), "the short reply waited for a long one to end"
        for job in long:
            job.cancel()
