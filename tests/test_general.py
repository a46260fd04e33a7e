"""The general-skills check (phi3space.engine.general): base and adapter answer the same questions, and an adapter
that lost what its base knew is caught. Real models throughout: the session's tiny Phi-3 and its adapter that learned
QA_PAIRS by heart, used as the "general" questions so that one side knows them and the other does not."""

import pytest
from helpers import QA_PAIRS

from phi3space.engine.general import general_check, is_right, questions, summary, verdict

ASKED = tuple({"id": f"qa-{i}", "skill": "memorised", "question": q, "answer": a} for i, (q, a) in enumerate(QA_PAIRS))


def test_the_shipped_questions_are_well_formed_and_answerable_by_their_own_answer():
    asked = questions()
    assert len(asked) >= 40 and len({q["id"] for q in asked}) == len(asked)
    assert {q["skill"] for q in asked} >= {"arithmetic", "geography", "science", "language", "reasoning", "code"}
    assert all(is_right(f"The answer is {q['answer']}.", q["answer"]) for q in asked)


@pytest.mark.parametrize("reply, answer, right", [
    ("The capital of France is Paris.", "Paris", True),
    ("paris", "Paris", True),
    ("120", "12", False),  # a number inside another is not the answer
    ("It is carbon dioxide (CO2).", "carbon dioxide", True),
    ("dioxide carbon", "carbon dioxide", False),
    ("", "Paris", False),
])
def test_a_reply_is_right_when_it_gives_the_answers_words_in_a_row(reply, answer, right):
    assert is_right(reply, answer) is right


def _models(tiny_model, trained_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from phi3space.engine.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    learned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(trained_run)).eval()
    return tokenizer, learned


def test_an_adapter_that_learned_what_its_base_did_not_know_gained_and_is_not_worse(tiny_model, trained_run):
    tokenizer, learned = _models(tiny_model, trained_run)
    seen = []
    result = general_check(learned, tokenizer, margin=0.1, progress=lambda i, n: seen.append((i, n)), asked=ASKED)
    assert seen == [(i, len(ASKED)) for i in range(1, len(ASKED) + 1)]
    assert result["adapter"] == 1.0 and result["base"] == 0.0 and result["worse"] is False
    assert result["gained"] == [q["id"] for q in ASKED] and result["lost"] == []
    assert [e["adapter"]["reply"] for e in result["examples"]] == [a for _, a in QA_PAIRS]
    assert "no loss past the margin of 10%" in verdict(result)


def test_an_adapter_that_undoes_what_its_base_knew_is_worse_past_the_margin(tiny_model, trained_run):
    """The base here knows the answers (the learned adapter merged into it); the adapter undoes exactly that (the same
    LoRA with its B matrices negated), as a narrow fine-tune can undo what a base could do."""
    import torch
    from peft import PeftModel

    tokenizer, learned = _models(tiny_model, trained_run)
    knowing = learned.merge_and_unload()
    forgetting = PeftModel.from_pretrained(knowing, str(trained_run)).eval()
    with torch.no_grad():
        for name, p in forgetting.named_parameters():
            if "lora_B" in name:
                p.neg_()
    result = general_check(forgetting, tokenizer, margin=0.25, asked=ASKED)
    assert result["base"] == 1.0 and result["adapter"] == 0.0 and result["drop"] == 1.0 and result["worse"] is True
    assert result["lost"] == [q["id"] for q in ASKED] and result["gained"] == []
    assert verdict(result) == ("general questions: the adapter got 0/4 right, its base 4/4: the adapter lost 100% on "
                               "general skills, more than the margin of 25%")


def test_a_loss_within_the_margin_is_not_worse():
    examples = [{"id": str(i), "base": {"right": True}, "adapter": {"right": i != 0}} for i in range(10)]
    assert summary(examples, margin=0.1)["worse"] is False
    assert summary(examples, margin=0.05)["worse"] is True and summary(examples, 0.05)["lost"] == ["0"]


@pytest.mark.slow
def test_a_run_that_unlearned_what_its_base_knew_holds_its_push_until_the_user_pushes_anyway(
        tiny_model, trained_run, alice, tmp_path, monkeypatch):
    """As a user meets it: a base that knows some answers (here: the learned adapter merged into the tiny Phi-3, with
    those questions as the general set), a narrow run that teaches other answers to them, and a push to the Hub."""
    from helpers import CANARY, memorise_config, write_qa_jsonl

    from phi3space import config
    from phi3space.engine import general, training
    from phi3space.engine.merge import merge_adapter
    from phi3space.hub.model_index import GENERAL_DATASET
    from phi3space.hub.push import push_run
    from phi3space.run import RunDir

    knowing = merge_adapter(str(trained_run), tmp_path / "knowing-base")
    asked = tmp_path / "general.jsonl"
    asked.write_text("".join(__import__("json").dumps(q) + "\n" for q in ASKED))
    monkeypatch.setattr(general, "QUESTIONS", asked)
    general.questions.cache_clear()
    try:
        other = write_qa_jsonl(tmp_path / "other.jsonl", [(q, "Nobody knows.") for q, _ in QA_PAIRS])
        cfg = config.from_dict(memorise_config(knowing, str(other), tmp_path / "run",
                                               output__push_to="alice/forgetful", output__general_margin=0.25))
        run = RunDir(training.train(cfg, token=CANARY))
    finally:
        general.questions.cache_clear()
    state = run.state()
    assert state.status == "completed" and state.general["base"] == 1.0 and state.general["adapter"] == 0.0
    assert state.push_held == ("general questions: the adapter got 0/4 right, its base 4/4: the adapter lost 100% on "
                               "general skills, more than the margin of 25%: the push to alice/forgetful is held")
    assert state.push_pending and not state.pushed
    assert "adapter_model.safetensors" not in alice.files("alice/forgetful")  # held: nothing of it on the Hub
    card = run.card.read_text()
    assert "## General skills: did it get worse?" in card and "**The adapter lost more than the margin of 25%.**" in card
    assert "| What is the capital of Zorbia? | Flimflam. | Flimflam. (right) | Nobody knows. (wrong) |" in card

    push_run(run.path, token=CANARY)  # the user read it, and pushes anyway
    files = alice.files("alice/forgetful")
    assert "adapter_model.safetensors" in files and not run.state().push_held and run.state().pushed
    from huggingface_hub import ModelCard

    pushed = ModelCard(files["README.md"].decode())
    results = {(r.dataset_type, r.metric_type): r.metric_value for r in pushed.data.eval_results}
    assert results == {(GENERAL_DATASET, "adapter_accuracy"): 0.0, (GENERAL_DATASET, "base_accuracy"): 1.0}
