"""End to end through the real trainer: a tiny Phi-3 learns Q&A pairs, the CLI trains, chats, resumes, refuses."""

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml
from helpers import QA_PAIRS, memorise_config, run_cli, start_cli, write_config, write_qa_jsonl

from phi3space import cli, config
from phi3space.engine import training
from phi3space.run import RunDir


def test_trained_adapter_reproduces_the_answers(trained_run):
    from phi3space.chat.engine import ChatEngine
    from phi3space.engine.adapters import adapter_base

    engine = ChatEngine(adapter_base(trained_run))
    for question, answer in QA_PAIRS:
        assert engine.reply([{"role": "user", "content": question}], adapter=str(trained_run)) == answer
    # The base model alone has learned nothing: the adapter is what answers.
    assert engine.reply([{"role": "user", "content": QA_PAIRS[0][0]}], max_new_tokens=8) != QA_PAIRS[0][1]


def test_replies_written_together_each_with_its_own_adapter(trained_run):
    """Replies under way at once share batched forward passes (peft's mixed-adapter batches): each still gets what
    its own adapter (or the base) writes alone; a visitor who stops reading frees the engine."""
    from concurrent.futures import ThreadPoolExecutor

    from phi3space.chat.engine import SLICE_TOKENS, ChatEngine
    from phi3space.engine.adapters import adapter_base

    engine = ChatEngine(adapter_base(trained_run))
    engine.attach(str(trained_run))
    base_alone = engine.reply([{"role": "user", "content": QA_PAIRS[0][0]}], max_new_tokens=8)
    batch_sizes, batches = [], []
    generate = engine._generate

    def counted(sampling, replies):
        batch_sizes.append(len(replies))
        batches.append(list(replies))
        generate(sampling, replies)

    engine._generate = counted
    asks = [(q, str(trained_run)) for q, _ in QA_PAIRS] + [(QA_PAIRS[0][0], None)]
    with ThreadPoolExecutor(len(asks)) as pool:
        got = list(pool.map(lambda ask: engine.reply([{"role": "user", "content": ask[0]}], adapter=ask[1],
                                                     max_new_tokens=8), asks))
    assert got == [a for _, a in QA_PAIRS] + [base_alone]
    assert max(batch_sizes) > 1
    batch_sizes.clear(), batches.clear()  # a visitor alone is written in one generate() call, not slice by slice
    engine.reply([{"role": "user", "content": "Tell me everything."}], max_new_tokens=40)
    assert batch_sizes == [1] and batches[0][0].generated > SLICE_TOKENS, (batch_sizes, batches[0][0].generated)
    long = engine.stream([{"role": "user", "content": "Tell me everything."}], max_new_tokens=1000)
    next(long)
    long.close()
    deadline = time.time() + 60
    while engine._worker is not None and time.time() < deadline:
        time.sleep(0.05)
    assert engine._worker is None


def test_run_folder_and_events(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "config.yaml", "events.jsonl",
            "loss_curve.png", "README.md"} <= names
    adapter_cfg = json.loads((trained_run / "adapter_config.json").read_text())
    assert {m.split(".")[-1] for m in adapter_cfg["target_modules"]} == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert (adapter_cfg["r"], adapter_cfg["lora_alpha"]) == (16, 32)

    events, _ = RunDir(trained_run).read_events()
    started = next(e for e in events if e["type"] == "run_started")
    assert started["config"]["lora"]["r"] == 16 and started["versions"]["trl"]
    assert 0 < started["trainable_pct"] < 100 and started["trainable_params"] > 0
    assert started["dataset"]["format"] == "messages" and started["dataset"]["train_rows"] == 4
    progress = [e for e in events if e["type"] == "progress"]
    assert {"step", "max_steps", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_s", "elapsed_s", "eta_s"} <= set(progress[-1])
    assert progress[-1]["step"] == 40 and progress[-1]["loss"] < 0.3 * progress[0]["loss"]  # it learned
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [20, 40]
    finished = events[-1]
    assert finished["type"] == "run_finished" and finished["status"] == "completed"
    assert finished["adapter"] == str(trained_run) and finished["metrics"]["steps"] == 40

    card = (trained_run / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "peft" and "lora" in front["tags"]
    assert "PeftModel.from_pretrained" in card and "loss_curve.png" in card
    assert config.load(trained_run / "config.yaml").lora.r == 16


def test_assistant_only_labels_in_the_trainers_batches(tiny_model, tmp_path):
    """Labels from trl's collator cover exactly the assistant turns: every prompt token is -100."""
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    cfg = config.from_dict(memorise_config(tiny_model, str(data), tmp_path / "run"))
    run = RunDir(cfg.output.dir)
    trainer = training.build_trainer(cfg, training.preflight(cfg, run, False, None, run.writer()))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    tok = trainer.processing_class
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
        trained = [i for i, lab in zip(ids, labels) if lab != -100]
        assert all(lab in (-100, i) for i, lab in zip(ids, labels))
        text = tok.decode(trained)
        assert text.endswith("<|end|><|endoftext|>") and text[: -len("<|end|><|endoftext|>")] in {a for _, a in QA_PAIRS}
        assert 32010 not in trained and 32001 not in trained  # no <|user|> or <|assistant|> in the loss


def test_rows_are_tokenised_once_and_trl_takes_them_as_they_are(tiny_model, tmp_path):
    from phi3space.engine import data, tokens

    path = write_qa_jsonl(tmp_path / "qa.jsonl")
    cfg = config.from_dict(memorise_config(tiny_model, str(path), tmp_path / "run", training__max_length=16))
    run = RunDir(cfg.output.dir)
    pre = training.preflight(cfg, run, False, None, run.writer())
    trainer = training.build_trainer(cfg, pre)
    assert trainer.train_dataset is pre.data.train  # no second pass: the same Arrow rows
    tok = pre.data.tokenizer
    for row, item in zip(pre.data.train, data.load_rows(cfg.data, "train")[0]):
        ids, mask = tokens.tokenize_example(item, tok)
        assert row["input_ids"] == ids[:16] and row["tokens"] == len(ids) and row["length"] == len(row["labels"])
        assert row["labels"] == [i if m else -100 for i, m in zip(ids[:16], mask[:16])]
    assert pre.data.report.over_max_length == 1.0  # measured on every row, before the cut


def test_packed_rows_do_not_attend_to_each_other_with_sdpa_or_eager(tiny_model):
    """Packing and padding-free batches put several rows in one sequence, their positions restarting at 0. With
    transformers 5's sdpa and eager attention the mask built from those positions keeps the rows apart: each row's
    logits are the ones it gets alone (which is why packing no longer needs flash-attention). Training runs without a
    KV cache; with one, transformers does not look for packed rows."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    rows = [torch.randint(0, 32000, (n,)) for n in (7, 13, 5)]
    positions = torch.cat([torch.arange(len(r)) for r in rows])[None]
    for attn in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attn).eval()
        with torch.no_grad():
            alone = torch.cat([model(input_ids=r[None]).logits[0] for r in rows])
            packed = model(input_ids=torch.cat(rows)[None], position_ids=positions, use_cache=False).logits[0]
            run_on = model(input_ids=torch.cat(rows)[None], use_cache=False).logits[0]  # no restart: the rows see each other
        assert (packed - alone).abs().max() < 1e-4, attn
        assert (run_on - alone).abs().max() > 1e-2, attn


def test_cpu_loss_equals_trls_and_packing_keeps_rows_apart(tiny_model, tmp_path):
    """The CPU loss (only trained positions through the LM head) equals trl's fused loss on the same batch; a
    packed batch of the same rows (sdpa, no flash-attention) gives the same loss again; nothing is checkpointed."""
    import torch

    path = write_qa_jsonl(tmp_path / "qa.jsonl", QA_PAIRS * 2)
    losses = {}
    for packing in (False, True):
        cfg = config.from_dict(memorise_config(tiny_model, str(path), tmp_path / f"run{packing}", training__packing=packing))
        run = RunDir(cfg.output.dir)
        trainer = training.build_trainer(cfg, training.preflight(cfg, run, False, None, run.writer()))
        assert not trainer.args.gradient_checkpointing and not trainer.model.base_model.model.is_activation_checkpointing
        if packing:
            batch = trainer.data_collator(list(trainer.train_dataset))
            assert batch["input_ids"].shape[0] == 1 and int((batch["position_ids"] == 0).sum()) == 8  # 8 rows, one sequence
        else:
            batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
            assert batch["input_ids"].shape[0] == 8 and "attention_mask" in batch
        trainer.model.eval()
        with torch.no_grad():
            trainer.compact_loss = True
            losses[packing] = float(trainer.compute_loss(trainer.model, dict(batch)))
            trainer.compact_loss = False
            assert float(trainer.compute_loss(trainer.model, dict(batch))) == pytest.approx(losses[packing], rel=1e-5)
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_qlora_on_cpu_is_not_checkpointed(tiny_model, tmp_path):
    cfg = config.from_dict(memorise_config(tiny_model, str(write_qa_jsonl(tmp_path / "qa.jsonl")), tmp_path / "run",
                                           model__method="qlora"))
    run = RunDir(cfg.output.dir)
    trainer = training.build_trainer(cfg, training.preflight(cfg, run, False, None, run.writer()))
    assert not trainer.args.gradient_checkpointing and not trainer.model.base_model.model.is_activation_checkpointing


@pytest.mark.slow
def test_cli_train_prints_progress_and_chat_answers(tiny_model, tmp_path):
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    cfg_path = write_config(tmp_path / "run.yaml", memorise_config(tiny_model, str(data), tmp_path / "run"))
    result = run_cli("train", str(cfg_path), "--set", "training.save_steps=100")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "run started" in result.stdout and "step 40/40" in result.stdout and "run completed" in result.stdout
    assert "Traceback" not in result.stderr
    question, answer = QA_PAIRS[2]
    chat = run_cli("chat", "--adapter", str(tmp_path / "run"), "--prompt", question)
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert chat.stdout.strip() == answer
    # Without --prompt: an interactive loop on stdin (an empty line ends it).
    loop = run_cli("chat", "--adapter", str(tmp_path / "run"), input=f"{QA_PAIRS[0][0]}\n\n")
    assert loop.returncode == 0, loop.stderr[-2000:]
    assert loop.stdout.strip() == QA_PAIRS[0][1]


def test_qlora_trains_evaluates_and_saves(tiny_model, tmp_path):
    import math

    data = write_qa_jsonl(tmp_path / "qa.jsonl", QA_PAIRS * 2)
    cfg = config.from_dict(memorise_config(tiny_model, str(data), tmp_path / "run", model__method="qlora",
                                           data__eval_fraction=0.25, training__max_steps=4, training__logging_steps=1,
                                           training__eval_steps=2))
    run_dir = training.train(cfg)
    events, _ = RunDir(run_dir).read_events()
    assert events[-1]["status"] == "completed" and (run_dir / "adapter_model.safetensors").stat().st_size > 0
    losses = [e["loss"] for e in events if e["type"] == "progress"]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
    assert json.loads((run_dir / "adapter_config.json").read_text())["r"] == 16
    started = next(e for e in events if e["type"] == "run_started")
    assert (started["dataset"]["train_rows"], started["dataset"]["eval_rows"]) == (6, 2)
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["step"] for e in evals][:2] == [2, 4]  # during training, then once more at the end
    assert all(e["perplexity"] == pytest.approx(math.exp(e["eval_loss"]), rel=1e-3) for e in evals)
    final = events[-1]["metrics"]
    assert final["eval_loss"] == pytest.approx(evals[-1]["eval_loss"]) and final["perplexity"] > 1


@pytest.mark.slow
def test_stop_saves_and_resume_continues_from_the_saved_step(tiny_model, tmp_path):
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    run_dir = tmp_path / "run"
    cfg_path = write_config(tmp_path / "run.yaml", memorise_config(
        tiny_model, str(data), run_dir, training__max_steps=100000, training__logging_steps=1, training__save_steps=100000))
    proc = start_cli("train", str(cfg_path))
    deadline = time.time() + 120
    while time.time() < deadline and not any(e["type"] == "progress" and e["step"] >= 3 for e in RunDir(run_dir).read_events()[0]):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err and "Traceback" not in err
    events, _ = RunDir(run_dir).read_events()
    stopped = events[-1]
    assert stopped["type"] == "run_finished" and stopped["status"] == "cancelled"
    assert (run_dir / "adapter_model.safetensors").exists()  # nothing lost
    saved_step = stopped["step"]
    assert (run_dir / f"checkpoint-{saved_step}").is_dir()

    result = run_cli("train", str(cfg_path), "--resume", "--set", f"training.max_steps={saved_step + 3}")
    assert result.returncode == 0, result.stderr[-2000:]
    events, _ = RunDir(run_dir).read_events()
    restarted = [e for e in events if e["type"] == "run_started"][-1]
    assert restarted["resumed_from"].endswith(f"checkpoint-{saved_step}")
    after = [e["step"] for e in events[events.index(restarted):] if e["type"] == "progress"]
    assert after[0] == saved_step + 1 and after[-1] == saved_step + 3
    assert events[-1]["status"] == "completed" and events[-1]["step"] == saved_step + 3


def _main(capsys, *argv):
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_each_bad_input_gets_its_own_message(tiny_model, tmp_path, capsys):
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    good = memorise_config(tiny_model, str(data), tmp_path / "run")
    cases = []

    cases.append((["train", str(tmp_path / "nope.yaml")], "config file not found"))
    bad_settings = write_config(tmp_path / "bad.yaml", {**good, "lora": {"r": 0, "dropout": 2}})
    cases.append((["train", str(bad_settings)], "lora.dropout: 2.0 is outside [0, 1)"))
    cases.append((["train", str(write_config(tmp_path / "c1.yaml", good)), "--set", f"data.dataset={tmp_path}/missing.jsonl"],
                  "data file not found"))
    (tmp_path / "pref.jsonl").write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    cases.append((["train", str(write_config(tmp_path / "c2.yaml", good)), "--set", f"data.dataset={tmp_path}/pref.jsonl"],
                  "preference data"))
    (tmp_path / "odd.jsonl").write_text(json.dumps({"q": "x", "a": "y"}) + "\n")
    cases.append((["train", str(write_config(tmp_path / "c3.yaml", good)), "--set", f"data.dataset={tmp_path}/odd.jsonl"],
                  "could not recognise the dataset format"))
    not_phi = tmp_path / "gpt2"
    not_phi.mkdir()
    (not_phi / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    cases.append((["train", str(write_config(tmp_path / "c4.yaml", good)), "--set", f"model.base={not_phi}",
                   "--set", f"output.dir={tmp_path}/r4"], "'gpt2' model; phi3space trains Phi-3"))
    cases.append((["train", str(write_config(tmp_path / "c5.yaml", good)), "--resume"], "--resume: no checkpoint in"))
    cases.append((["chat", "--adapter", str(tmp_path / "no-such-run"), "--prompt", "hi"], "adapter not found"))
    cases.append((["inspect", str(tmp_path / "odd.jsonl")], "could not recognise the dataset format"))

    for argv, expected in cases:
        code, err = _main(capsys, *argv)
        assert code == 2, (argv, err)
        assert expected in err and "hint:" in err, (argv, err)


def test_existing_run_folder_is_not_overwritten(trained_run, capsys, tmp_path):
    cfg_path = write_config(tmp_path / "again.yaml", yaml.safe_load((trained_run / "config.yaml").read_text()))
    code, err = _main(capsys, "train", str(cfg_path))
    assert code == 2 and "already holds a run" in err and "--resume" in err


def test_inspect_prints_the_report(tmp_path, capsys, tiny_model):
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    with data.open("a") as fh:
        fh.write("{broken\n")
    assert cli.main(["inspect", str(data), "--set", f"model.base={tiny_model}", "--set", "training.max_length=16"]) == 0
    out = capsys.readouterr().out
    assert "format: messages" in out and "rows: 5 read, 4 kept, 1 dropped" in out and "dropped 1: broken JSON line" in out
    assert "tokens per row: min" in out and "longer than max_length 16: 100.0%" in out
    assert "<|assistant|>[[" in out


def test_out_of_memory_is_a_message_with_a_hint(tmp_path):
    import torch

    cfg = config.from_dict({"data": {"dataset": "x.jsonl"}})
    run = RunDir(tmp_path)
    err = training._as_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), cfg, run)
    assert err.kind == "oom" and "ran out of memory" in err.message
    assert "batch_size" in err.hint and "qlora" in err.hint and "max_length" in err.hint and "--resume" not in err.hint
    run.checkpoint(3).mkdir()
    (run.checkpoint(3) / run.ADAPTER_WEIGHTS).write_bytes(b"weights")
    (run.checkpoint(3) / run.TRAINER_STATE).write_text('{"global_step": 3}')
    assert "--resume" in training._as_oom(torch.OutOfMemoryError("CUDA out of memory"), cfg, run).hint
    assert training._as_oom(ValueError("shapes do not match"), cfg, run) is None  # a bug stays a bug


def test_merged_model_answers_without_peft(trained_run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert cli.main(["merge", str(trained_run), "--out", str(tmp_path / "merged")]) == 0
    assert "merged model saved" in capsys.readouterr().out
    merged = tmp_path / "merged"
    assert not (merged / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(merged)
    tok = AutoTokenizer.from_pretrained(merged)
    question, answer = QA_PAIRS[3]
    inputs = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False, eos_token_id=[32000, 32001, 32007])
    assert tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip() == answer


def test_micro_batches_of_a_step_are_grouped_by_length_and_every_row_is_trained_once(tiny_model, tmp_path):
    """With gradient accumulation, the rows of each optimizer step are split into micro-batches by length (less
    padding), and an epoch still trains every row exactly once."""
    import random

    rng = random.Random(0)
    words = [rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(400)]
    pairs = [(" ".join(words[i:i + n]) + "?", f"Answer {i}.") for i, n in enumerate(rng.choice([2, 30, 80]) for _ in range(24))]
    path = write_qa_jsonl(tmp_path / "mixed.jsonl", pairs)
    cfg = config.from_dict(memorise_config(tiny_model, str(path), tmp_path / "run", training__batch_size=2,
                                           training__grad_accum=3, training__max_length=256))
    run = RunDir(cfg.output.dir)
    trainer = training.build_trainer(cfg, training.preflight(cfg, run, False, None, run.writer()))
    assert trainer.args.train_sampling_strategy == "batch_rebalance"
    batches = list(trainer.get_train_dataloader())
    rows = [tuple(ids[mask.bool()].tolist()) for b in batches for ids, mask in zip(b["input_ids"], b["attention_mask"])]
    assert sorted(rows) == sorted(tuple(r) for r in trainer.train_dataset["input_ids"])  # each row once
    for step in range(0, len(batches), 3):  # a step's micro-batches hold disjoint ranges of lengths
        spans = sorted((int(m.sum(1).min()), int(m.sum(1).max())) for m in (b["attention_mask"] for b in batches[step:step + 3]))
        assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:])), spans


def test_streamed_text_is_decoded_piecewise_and_never_shows_half_a_character(tiny_model, monkeypatch):
    """The reply is decoded a few tokens at a time (not all of it again at each token): every update extends the
    last one, none ends in half of a multi-byte character, and the whole reply is what decoding all its tokens gives."""
    from phi3space.chat.engine import ChatEngine

    engine = ChatEngine(str(tiny_model))
    text = "Grüße aus Köln 🌍🚀 — 日本語のテキスト, done."
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 20 and any(engine.tokenizer.decode(ids[:n]).endswith("\ufffd") for n in range(len(ids)))

    class OneAtATime(list):  # the worker's part: the tokens come one by one, then the end
        def get(self):
            return self.pop(0)

        def empty(self):
            return True

    monkeypatch.setattr(engine, "_submit", lambda reply: setattr(reply, "out", OneAtATime([*ids, None])))
    decoded, decode = [], engine.tokenizer.decode
    monkeypatch.setattr(engine.tokenizer, "decode", lambda tokens, **kw: (decoded.append(len(tokens)), decode(tokens, **kw))[1])
    updates = list(engine.stream([{"role": "user", "content": "Hi"}]))
    assert updates[-1] == decode(ids, skip_special_tokens=True) and len(updates) > 10
    assert all(b.startswith(a) for a, b in zip(updates, updates[1:]))
    assert max(decoded[:-1]) <= 6 and decoded[-1] == len(ids)  # a few tokens a time; all of them once, at the end
    assert not any(u.endswith("\ufffd") for u in updates)


@pytest.mark.slow
def test_chat_loads_no_training_libraries(tiny_model):
    """`phi3space chat` starts faster without trl, datasets and pandas, which it never uses."""
    code = ("import sys; from phi3space.chat.engine import ChatEngine; e = ChatEngine(sys.argv[1]); "
            "e.reply([{'role': 'user', 'content': 'Hi'}], max_new_tokens=4); "
            "print(sorted(m for m in ('trl', 'datasets', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_model)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
