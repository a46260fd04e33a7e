"""Did the adapter get worse at everything else? Fine-tuning on a narrow set often breaks what the base could do, and
nobody notices until later. Before a run pushes, the base (its adapter switched off) and the adapter answer the same
few dozen short general questions shipped with the app (``general_skills.jsonl``: arithmetic, geography, science,
language, reasoning, code; written for phi3space, MIT like the project), greedily and briefly; a reply is right when
the answer's words appear in it in order (normalised as the evaluation's scores are). The result says how many each
got right, which questions the adapter lost and gained, and whether the adapter lost more than the run's margin.

The training run's publish step runs it (``output.general_check``) and, past the margin, holds the push unless
``output.push_if_worse`` (the CLI's ``--push-anyway``; the page's "Push anyway" pushes a held run).
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from functools import cache
from pathlib import Path

from phi3space.engine.metrics import normalise
from phi3space.generation import GenerationSettings

QUESTIONS = Path(__file__).with_name("general_skills.jsonl")
SETTINGS = GenerationSettings(max_new_tokens=24, temperature=0.0)


@cache
def questions() -> tuple[dict, ...]:
    """The shipped general questions: {id, skill, question, answer} each."""
    return tuple(json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip())


def is_right(reply: str, answer: str) -> bool:
    """Whether ``reply`` gives ``answer``: the answer's normalised words appear in the reply's, in a row ("The capital
    of France is Paris." answers "Paris"; "12" does not answer "120")."""
    want, got = normalise(answer).split(), normalise(reply).split()
    return bool(want) and any(got[i:i + len(want)] == want for i in range(len(got) - len(want) + 1))


def general_check(model, tokenizer, margin: float, progress=None, asked: tuple[dict, ...] | None = None) -> dict:
    """Ask base and adapter every general question (``model``: a PeftModel; its adapter is switched off for the
    base), as it is written (no system prompt, no added instruction: the adapter is judged as people will talk to
    it). ``progress(i, n)`` is called after each question; ``asked``: other questions than the shipped ones.
    Returns {questions, base, adapter (the fraction right), drop (base - adapter), margin, worse (drop > margin),
    lost, gained (question ids), examples (per question: id, skill, question, answer, and each side's reply and
    right)}."""
    from phi3space.engine.evaluate import greedy_reply
    from phi3space.engine.modeling import stop_token_ids

    stop, examples = stop_token_ids(tokenizer), []
    asked = asked or questions()
    for i, q in enumerate(asked, 1):
        example = {k: q[k] for k in ("id", "skill", "question", "answer")}
        prompt = [{"role": "user", "content": q["question"]}]
        for side in ("base", "adapter"):
            with model.disable_adapter() if side == "base" else nullcontext():
                reply, _ = greedy_reply(model, tokenizer, prompt, SETTINGS, stop)
            example[side] = {"reply": reply, "right": is_right(reply, q["answer"])}
        examples.append(example)
        if progress is not None:
            progress(i, len(asked))
    return summary(examples, margin)


def summary(examples: list[dict], margin: float) -> dict:
    """What ``general_check`` returns, from its per-question examples."""
    n = len(examples) or 1
    base = sum(e["base"]["right"] for e in examples) / n
    adapter = sum(e["adapter"]["right"] for e in examples) / n
    return {"questions": len(examples), "base": base, "adapter": adapter, "drop": base - adapter, "margin": margin,
            "worse": base - adapter > margin + 1e-9,
            "lost": [e["id"] for e in examples if e["base"]["right"] and not e["adapter"]["right"]],
            "gained": [e["id"] for e in examples if e["adapter"]["right"] and not e["base"]["right"]],
            "examples": examples}


def verdict(result: dict) -> str:
    """One sentence: how base and adapter did, and whether the adapter lost more than the margin."""
    n = result["questions"]
    said = (f"general questions: the adapter got {round(result['adapter'] * n)}/{n} right, its base "
            f"{round(result['base'] * n)}/{n}")
    if result["worse"]:
        return (f"{said}: the adapter lost {result['drop']:.0%} on general skills, more than the margin of "
                f"{result['margin']:.0%}")
    return f"{said}: no loss past the margin of {result['margin']:.0%}"
