"""Preference tuning (training.objective: dpo): pairs read in every form, a tiny Phi-3 that learns to prefer the
chosen answers on pairs it never saw, DPO continued from an SFT run's adapter, and what the views make of it."""

import json

import pytest
from helpers import (
    CANARY,
    FIXTURE,
    PAIR_THINGS,
    QA_PAIRS,
    dpo_config,
    model_files,
    preference_pairs,
    write_pairs_jsonl,
)

from phi3space import config
from phi3space.engine import pairs, training
from phi3space.errors import ConfigError
from phi3space.run import RunDir

HELD_OUT = 6  # the last things of PAIR_THINGS: pairs the model never trains on


def answer_logps(model, tokenizer, rows):
    """Summed log-probabilities of each row's chosen and rejected answer after its prompt: [(chosen, rejected)]."""
    import torch

    out = []
    for row in rows:
        p = pairs.normalise_pair(row)[0]
        prompt = tokenizer.apply_chat_template(p["prompt"], add_generation_prompt=True, return_dict=True)["input_ids"]
        scores = []
        for side in ("chosen", "rejected"):
            ids = tokenizer.apply_chat_template(p["prompt"] + p[side], return_dict=True)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, :-1].float()
            logps = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
            scores.append(float(logps[len(prompt) - 1:].sum()))
        out.append(tuple(scores))
    return out


@pytest.fixture(scope="module")
def dpo_run(tiny_model, build_once):
    """A finished DPO run on all but the held-out pairs (a fifth of them evaluated on), trained once per test run."""
    def train(root):
        data = write_pairs_jsonl(root / "pairs.jsonl", preference_pairs(PAIR_THINGS[:-HELD_OUT]))
        training.train(config.from_dict(dpo_config(tiny_model, str(data), root / "run", data__eval_fraction=0.2,
                                                   training__max_steps=12, training__save_steps=12,
                                                   training__eval_steps=6, training__logging_steps=2)))

    return build_once("dpo", train) / "run"


@pytest.mark.slow
def test_dpo_learns_to_prefer_the_chosen_answers_on_new_pairs(dpo_run, tiny_model):
    """On pairs it never saw, the adapter's implicit reward ranks the chosen answer first (reward accuracy well
    above chance), and the adapter puts a wider log-probability margin between chosen and rejected than the base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from phi3space.engine.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model)), str(dpo_run)).eval()
    held_out = preference_pairs(PAIR_THINGS[-HELD_OUT:])
    tuned = answer_logps(model, tokenizer, held_out)
    with model.disable_adapter():
        base = answer_logps(model, tokenizer, held_out)
    rewards = [(c - bc) - (r - br) for (c, r), (bc, br) in zip(tuned, base)]  # DPO's implicit reward margin / beta
    accuracy = sum(m > 0 for m in rewards) / len(rewards)
    assert accuracy >= 5 / 6, rewards
    tuned_margin = sum(c - r for c, r in tuned) / len(tuned)
    base_margin = sum(c - r for c, r in base) / len(base)
    assert tuned_margin > base_margin + 1.0, (tuned_margin, base_margin)


@pytest.mark.slow
def test_dpo_events_card_and_chart(dpo_run):
    """The events carry the DPO loss and reward accuracy and margin (train and eval); the reference at step 1 is
    the base itself (a new adapter starts at zero: the loss is ln 2); the card says DPO and reports the rewards;
    the page's reward charts have their series (the loss chart only the losses); the run folder holds only the trained adapter."""
    from phi3space.ui.follow import Follower

    state = RunDir(dpo_run).state()
    events, _ = RunDir(dpo_run).read_events()
    started = next(e for e in events if e["type"] == "run_started")
    assert started["config"]["training"]["objective"] == "dpo"
    assert started["dataset"]["format"] == "preference pairs" and started["dataset"]["eval_rows"] == 5
    first = next(e for e in events if e["type"] == "progress")
    assert first["step"] == 1 and first["loss"] == pytest.approx(0.6931, abs=1e-3) and first["reward_margin"] == 0
    assert state.status == "completed" and state.train_rewards[-1][1] == 1.0 and state.train_rewards[-1][2] > 1
    assert [step for step, _, _ in state.eval_rewards][:2] == [6, 12] and state.eval_rewards[-1][1] == 1.0
    assert state.metrics["eval_reward_accuracy"] == 1.0 and "perplexity" not in state.metrics

    card = (dpo_run / "README.md").read_text()
    assert "- dpo" in card and "preference-tuned with DPO" in card and "DPO (beta 0.1, loss sigmoid)" in card
    assert "| eval reward accuracy | 1.0000 |" in card and "eval perplexity" not in card

    follower = Follower(job_id="x", run_dir=str(dpo_run))
    follower.poll()
    assert set(follower.loss_frame()["split"]) == {"train", "eval"}
    accuracy, margin = follower.reward_frame("accuracy"), follower.reward_frame("margin")
    assert set(accuracy["split"]) == set(margin["split"]) == {"train", "eval"}
    assert accuracy[accuracy["split"] == "eval"]["accuracy"].tolist() == [1.0, 1.0, 1.0]  # steps 6, 12, the end
    assert margin[margin["split"] == "train"]["margin"].iloc[-1] > 1
    assert not (dpo_run / "ref").exists() and (dpo_run / "adapter_model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["run folder", "Hub repo"])
def test_dpo_continues_from_an_sft_runs_adapter(trained_run, tmp_path, alice, where):
    """SFT then DPO, from the SFT run's folder or from its adapter on the Hub (a private repo, read with the
    user's token): the run starts from that adapter (its answers survive a few gentle DPO steps, which a new adapter
    on the random base could not give), and that adapter, frozen, is the reference (step 1's loss is ln 2 although
    the SFT adapter is far from the base)."""
    from phi3space.chat.engine import ChatEngine

    rows = [{"prompt": q, "chosen": a, "rejected": "I do not know."} for q, a in QA_PAIRS]
    data = write_pairs_jsonl(tmp_path / "pairs.jsonl", rows)
    base = RunDir(trained_run).adapter_base()
    start = str(trained_run)
    if where == "Hub repo":
        start = "alice/sft-adapter"
        alice.add_repo(start, model_files(trained_run), private=True, owner_token=CANARY)
    cfg = config.from_dict(dpo_config(base, str(data), tmp_path / "run", model__init_adapter=start,
                                      training__learning_rate=1e-4, training__max_steps=3, training__logging_steps=1,
                                      training__save_steps=3))
    run = training.train(cfg, token=CANARY)
    events, _ = RunDir(run).read_events()
    first = next(e for e in events if e["type"] == "progress")
    assert first["loss"] == pytest.approx(0.6931, abs=1e-3) and first["reward_margin"] == 0
    adapter_cfg = json.loads((run / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 16 and not (run / "ref").exists() and not (run / "checkpoint-3" / "ref").exists()
    assert (run / "checkpoint-3" / "adapter_model.safetensors").exists() and (run / "training_args.bin").exists()
    engine = ChatEngine(RunDir(run).adapter_base())
    for question, answer in QA_PAIRS:
        assert engine.reply([{"role": "user", "content": question}], adapter=str(run)) == answer
    assert "starting from the adapter" in (run / "README.md").read_text()


# ---- pairs in every form (no training)

def test_pair_forms_normalise_alike():
    """Text columns, conversations sharing a prompt (HH style), an explicit prompt beside answer-only lists, and
    sharegpt's from/value all become the same conversational pair."""
    user, bot = ({"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"})
    rude = {"role": "assistant", "content": "Go away."}
    want = {"prompt": [user], "chosen": [bot], "rejected": [rude]}
    rows = [
        {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."},
        {"chosen": [user, bot], "rejected": [user, rude]},
        {"prompt": "Hi?", "chosen": [user, bot], "rejected": [user, rude]},  # ultrafeedback: the prompt repeated
        {"prompt": [user], "chosen": [bot], "rejected": [rude]},
        {"chosen": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello!"}],
         "rejected": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Go away."}]},
    ]
    for row in rows:
        assert pairs.normalise_pair(row) == (want, ""), row
    with_system = pairs.normalise_pair({"system": "Be kind.", "prompt": "Hi?", "chosen": "Hello!", "rejected": "No."})[0]
    assert with_system["prompt"][0] == {"role": "system", "content": "Be kind."}


def test_inspect_shows_a_pair_counts_and_drops(tmp_path):
    """Inspect (the form's and the CLI's) shows a prompt with its two answers, counts pairs kept and dropped with
    their reasons (after the column mapping), and the plan warns when most pairs would be truncated."""
    from phi3space import cli
    from phi3space.ui import forms

    rows = [{"q": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in preference_pairs(PAIR_THINGS[:8])]
    rows += [{"q": "Same?", "good": "Yes.", "bad": "Yes."}, {"q": "", "good": "a", "bad": "b"},
             {"q": "tell me " * 40, "good": "a", "bad": "b"}]
    data = write_pairs_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = config.from_dict({"model": {"base": str(FIXTURE)}, "data": {"dataset": str(data), "eval_fraction": 0,
                                                                     "columns": {"prompt": "q", "chosen": "good",
                                                                                 "rejected": "bad"}},
                            "training": {"objective": "dpo", "max_length": 64}})
    found = forms.inspect_dataset(cfg, None)
    assert "format: preference pairs" in found.text and "rows: 11 read, 8 kept, 3 dropped" in found.text
    for reason in ("dropped 1: identical answers", "dropped 1: empty prompt", "dropped 1: prompt alone fills max_length 64"):
        assert reason in found.text
    labels = {label: text for text, label in found.segments if label}
    assert labels == {"chosen": "Gladly! The zorbia is lovely and kind.", "rejected": "No. Go away, zorbia."}
    assert "Tell me about the zorbia." in found.segments[0][0]
    assert not any("truncated" in w for w in forms.plan(cfg, found).warnings)
    cfg.training.max_length = 20
    assert any("of pairs are longer than max_length 20 and will be truncated" in w for w in forms.plan(cfg, found).warnings)

    code = cli.main(["inspect", str(data), "--set", f"model.base={FIXTURE}", "--set", "training.objective=dpo",
                     "--set", "data.columns={prompt: q, chosen: good, rejected: bad}"])
    assert code == 0


def test_dpo_settings_validate_and_reach_the_form():
    cfg = config.from_dict({"data": {"dataset": "x/y"}}, ["training.objective=dpo", "training.beta=0.3",
                                                          "training.loss_type=ipo", "model.init_adapter=me/sft"])
    assert (cfg.training.objective, cfg.training.beta, cfg.training.loss_type) == ("dpo", 0.3, "ipo")
    assert config.default_run_name(cfg) == "phi-3-mini-4k-instruct-y-lora-dpo"
    with pytest.raises(ConfigError) as err:
        config.from_dict({"data": {"dataset": "x/y"}}, ["training.beta=-1", "training.loss_type=kto"])
    assert "training.beta: -1.0 is outside (0, 100]" in err.value.message
    from phi3space.ui import forms

    for key in ("training.objective", "training.beta", "training.loss_type", "model.init_adapter"):
        assert key in forms.FIELDS
    from phi3space.jobs import spec

    values = forms.form_values(cfg)
    assert forms.config_from_form(values).to_dict() == spec.of(cfg).to_dict()  # (the form also says where it trains)
    # A pair is two sequences in each pass, and the reference adds a forward pass: DPO needs more memory and time.
    from phi3space.engine import estimates

    sft = config.from_dict({"data": {"dataset": "x/y"}, "training": {"max_steps": 100}})
    assert estimates.estimate_memory_gb(cfg) > estimates.estimate_memory_gb(sft)
    cfg.training.max_steps = 100
    assert estimates.training_seconds(cfg, "H200") > 2 * estimates.training_seconds(sft, "H200")


@pytest.mark.slow
def test_sft_also_continues_from_an_adapter(trained_run, tmp_path):
    """model.init_adapter is not DPO's alone: an SFT run continued from an adapter keeps what it knew."""
    from helpers import memorise_config, write_qa_jsonl

    from phi3space.chat.engine import ChatEngine

    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    cfg = config.from_dict(memorise_config(RunDir(trained_run).adapter_base(), str(data), tmp_path / "run",
                                           model__init_adapter=str(trained_run), training__max_steps=2,
                                           training__learning_rate=1e-4, training__save_steps=2))
    run = training.train(cfg)
    engine = ChatEngine(RunDir(run).adapter_base())
    for question, answer in QA_PAIRS:
        assert engine.reply([{"role": "user", "content": question}], adapter=str(run)) == answer


@pytest.mark.slow
def test_a_dpo_run_resumes_from_its_checkpoint(tiny_model, tmp_path):
    """The shared resume path: a DPO run continued with --resume goes on from its newest checkpoint, and its
    reward curve goes on with it."""
    data = write_pairs_jsonl(tmp_path / "pairs.jsonl", preference_pairs(PAIR_THINGS[:8]))
    cfg = config.from_dict(dpo_config(tiny_model, str(data), tmp_path / "run", training__max_steps=4,
                                      training__save_steps=2, training__logging_steps=1))
    run = training.train(cfg)
    cfg.training.max_steps = 6
    training.train(cfg, resume=True)
    events, _ = RunDir(run).read_events()
    started = [e for e in events if e["type"] == "run_started"]
    assert started[-1]["resumed_from"].endswith("checkpoint-4")
    state = RunDir(run).state()
    assert state.status == "completed" and [s for s, _, _ in state.train_rewards] == [1, 2, 3, 4, 5, 6]


def test_a_local_starting_adapter_is_refused_where_paths_are(tmp_path):
    """On a Space (and on Hugging Face Jobs) the starting adapter, like the data and the base, must be a Hub ID."""
    from phi3space.jobs.hf.platform import check_job
    from phi3space.jobs.submit import check_inputs_allowed, inputs

    cfg = config.from_dict({"data": {"dataset": "me/pairs"}, "output": {"push_to": "me/dpo"}},
                           ["training.objective=dpo", f"model.init_adapter={tmp_path}/runs/my-sft"])
    with pytest.raises(ConfigError, match="model.init_adapter: .* is a path on the server"):
        check_inputs_allowed(inputs(cfg), (), space=True)
    with pytest.raises(ConfigError, match="model.init_adapter: .* is a path on this machine"):
        check_job(cfg, "hf_" + "x" * 20)
    cfg.model.init_adapter = "me/my-sft"
    check_inputs_allowed(inputs(cfg), (), space=True)


@pytest.mark.slow
def test_dpo_through_the_api(app, tiny_model, tmp_path):
    """/submit_job takes a DPO run config like any other; /job_status reports its reward metrics; /chat answers
    with its adapter."""
    import yaml
    from helpers import FINAL, client, wait_for

    url, runner = app
    data = write_pairs_jsonl(tmp_path / "pairs.jsonl", preference_pairs(PAIR_THINGS[:12]))
    cfg = dpo_config(tiny_model, str(data), tmp_path / "ignored", training__max_steps=6, training__save_steps=6,
                     data__eval_fraction=0.25)
    c = client(url)
    job_id = c.predict(yaml.safe_dump(cfg), api_name="/submit_job")
    s = wait_for(c, job_id, lambda s: s["status"] in FINAL)
    assert s["status"] == "completed" and s["step"] == 6, s
    assert s["metrics"]["eval_reward_accuracy"] == 1.0 and s["metrics"]["eval_reward_margin"] > 0
    assert runner.store.get(job_id).name == f"{tiny_model.name}-pairs-lora-dpo"
    reply = c.predict(s["adapter"], "Tell me about the comet.", "", 8, api_name="/chat")
    assert isinstance(reply, str) and reply
