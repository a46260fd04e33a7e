"""Every bad input a person can hand the CLI ends in one `error:` line and one `hint:` line, exit status 2, and
leaves the folder it names exactly as it was: no file written, changed or left behind (a run refused before it
trains takes its new run folder away again).

Each case runs ``phi3space.cli.main`` in-process on files written once into one shared folder: broken configs and
``--set`` overrides for ``train`` (refused before any model loads, or in the cheap checks before training), broken
data files for ``inspect``, adapters and run folders for ``chat``, ``merge``, ``eval`` and ``export``. ``DROPPED``
holds inputs that are read with their bad rows dropped and counted. The last tests check that a good config and a
good data file in the same folder still work afterwards, and that someone's folder was left alone. Nothing trains.
"""

import json
import os
import sys

import pytest
import yaml
from helpers import FIXTURE

from phi3space import cli, config
from phi3space.errors import ConfigError

TOKEN = "hf_" + "Zq3" * 11 + "x"  # token-shaped (hf_ + 34 letters and digits), not a real token
TOKEN_HINT = "HF_TOKEN or the sign-in"

# Argument lists: C(name) trains from a config file of the shared folder, T(*settings) trains from the good config
# with --set overrides, inspect_args(name, *settings) inspects a data file (the tokenizer comes from the fixture, never the Hub).
# "{d}" in a fragment stands for the shared folder.


def C(name):
    return ["train", f"{{d}}/{name}"]


def T(*settings):
    return ["train", "{d}/good.yaml"] + [arg for s in settings for arg in ("--set", s)]


def inspect_args(target, *settings):
    target = target if target == TOKEN else f"{{d}}/{target}"
    return ["inspect", target] + [arg for s in ("model.base=" + str(FIXTURE),) + settings for arg in ("--set", s)]


def pairs_args(target, *settings):
    """Inspect a data file as DPO's preference pairs."""
    return inspect_args(target, "training.objective=dpo", *settings)


# Each case: id, argv, a fragment of its own error message.
CASES = [
    # ---- config files (train CONFIG)
    ("config-missing", C("nope.yaml"), "config file not found"),
    ("config-is-a-folder", C("configs"), "configs is a folder, not a file"),
    ("config-symlink-loop", C("loop.yaml"), "loop.yaml is a symlink loop"),
    ("config-dangling-link", C("dangling.yaml"), "dangling.yaml is a link to a missing file"),
    ("config-latin1", C("latin1.yaml"), "latin1.yaml is not UTF-8 text (byte 0xe9 on line 3)"),
    ("config-utf16", C("utf16.yaml"), "utf16.yaml is UTF-16 text; a run config must be UTF-8"),
    ("config-binary", C("binary.yaml"), "binary.yaml is a binary file, not YAML text"),
    ("config-too-big", C("big.yaml"), "over the 64 KiB limit for a run config"),
    ("config-alias-bomb", C("bomb.yaml"), "bomb.yaml uses the YAML alias *a (line 2"),
    ("config-broken-yaml", C("broken.yaml"), "broken.yaml is not valid YAML (line 2, column 1"),
    ("config-a-list", C("list.yaml"),
     "list.yaml must hold a mapping (model:, data:, lora:, training:, output:), not a list"),
    ("config-a-string", C("scalar.yaml"), "not a string ('just some text')"),
    ("config-deep", C("deep.yaml"), "deep.yaml is nested too deeply"),
    ("config-bad-date", C("baddate.yaml"), "cannot read the value: month must be in 1..12"),
    ("config-section-not-mapping", C("section.yaml"), "training: expected a mapping of settings, got 5"),
    ("config-token-in-file", C("token.yaml"), "output.push_to: holds what looks like a Hugging Face access token"),
    ("config-nan-in-file", C("nan.yaml"), "training.learning_rate: nan is not a finite number; use a value in (0, 1]"),
    ("config-flat-trl-names", C("flat.yaml"), "num_train_epochs: unknown setting (did you mean training.epochs?)"),
    # ---- --set overrides for train
    ("set-lr", T("training.lr=1e-4"), "training.lr: unknown setting (did you mean training.learning_rate?)"),
    ("set-max-seq-length", T("max_seq_length=512"),
     "max_seq_length: unknown setting (did you mean training.max_length?)"),
    ("set-per-device-batch", T("training.per_device_train_batch_size=8"), "(did you mean training.batch_size?)"),
    ("set-grad-accum-steps", T("gradient_accumulation_steps=2"), "(did you mean training.grad_accum?)"),
    ("set-lora-r-alias", T("lora.lora_r=8"), "lora.lora_r: unknown setting (did you mean lora.r?)"),
    ("set-lora-alpha-alias", T("lora_alpha=16"), "lora_alpha: unknown setting (did you mean lora.alpha?)"),
    ("set-epochs-inf", T("training.epochs=.inf"), "training.epochs: inf is not a finite number"),
    ("set-weight-decay-minus-inf", T("training.weight_decay=-.inf"),
     "training.weight_decay: -inf is not a finite number"),
    ("set-warmup-nan", T("training.warmup_ratio=.nan"), "training.warmup_ratio: nan is not a finite number"),
    ("set-dropout-nan-text", T("lora.dropout=nan"), "lora.dropout: nan is not a finite number"),
    ("set-eval-fraction-inf", T("data.eval_fraction=.inf"),
     "data.eval_fraction: inf is not a finite number; use a value in [0, 1)"),
    ("set-seed-negative", T("training.seed=-1"), "training.seed: -1 is outside [0, 4294967295]"),
    ("set-seed-2-32", T("training.seed=4294967296"), "training.seed: 4294967296 is outside"),
    ("set-lora-r-1e9", T("lora.r=1e9"), "lora.r: 1000000000 is outside [1, 1024]"),
    ("set-lora-alpha-huge", T("lora.alpha=100000"), "lora.alpha: 100000 is outside [1, 4096]"),
    ("set-batch-size-1e9", T("training.batch_size=1000000000"), "training.batch_size: 1000000000 is outside [1, 4096]"),
    ("set-grad-accum-huge", T("training.grad_accum=5000"), "training.grad_accum: 5000 is outside [1, 4096]"),
    ("set-max-steps-huge", T("training.max_steps=1e12"), "training.max_steps: 1000000000000 is outside [1, 10000000]"),
    ("set-epochs-huge", T("training.epochs=5000"), "training.epochs: 5000.0 is outside (0, 1000]"),
    ("set-weight-decay-huge", T("training.weight_decay=50"), "training.weight_decay: 50.0 is outside [0, 10]"),
    ("set-save-total-limit-huge", T("training.save_total_limit=100000"),
     "training.save_total_limit: 100000 is outside [1, 1000]"),
    ("set-logging-steps-zero", T("training.logging_steps=0"), "training.logging_steps: 0 is outside [1, 10000000]"),
    ("set-max-samples-zero", T("data.max_samples=0"), "data.max_samples: 0 is outside [1, 1000000000]"),
    ("set-lora-r-bool", T("lora.r=true"), "lora.r: expected int, got True"),
    ("set-batch-size-yes", T("training.batch_size=yes"), "training.batch_size: expected int, got True"),
    ("set-lr-bool", T("training.learning_rate=false"), "training.learning_rate: expected float, got False"),
    ("set-lora-r-overflow", T("lora.r=1e400"), "lora.r: expected int, got '1e400'"),
    ("set-lora-r-empty", T("lora.r="), "lora.r: needs a value (default: 16)"),
    ("set-base-a-list", T("model.base=[a, b]"), "model.base: expected str, got ['a', 'b']"),
    ("set-method", T("model.method=full"), "model.method: 'full' is not one of lora, qlora"),
    ("set-columns-not-mapping", T("data.columns=question"), "data.columns: expected a mapping"),
    ("set-section-scalar", T("lora=8"), "lora: expected a mapping of settings, got 8"),
    ("set-no-equals", T("lora.r"), "--set 'lora.r': expected KEY=VALUE"),
    ("set-alias", T("model.base=[&a x, *a]"), "--set model.base: the value uses a YAML alias"),
    ("set-token-dataset", T(f"data.dataset={TOKEN}"),
     "data.dataset: holds what looks like a Hugging Face access token"),
    ("set-token-columns", T(f"data.columns={{prompt: {TOKEN}}}"), "data.columns: holds what looks like"),
    # ---- --set overrides for inspect
    ("inspect-max-length", inspect_args("good.jsonl", "training.max_length=8"), "training.max_length: 8 is outside [16, 131072]"),
    ("inspect-lr-alias", inspect_args("good.jsonl", "lr=1e-4"), "lr: unknown setting (did you mean training.learning_rate?)"),
    ("inspect-seed-nan", inspect_args("good.jsonl", "training.seed=.nan"), "training.seed: expected int, got nan"),
    ("inspect-token-as-dataset", inspect_args(TOKEN),
     "data.dataset: holds what looks like a Hugging Face access token (not shown"),
    ("inspect-columns-missing", inspect_args("good.jsonl", "data.columns={prompt: question}"),
     "data.columns names columns that {d}/good.jsonl does not have (prompt: question); its columns are: completion"),
    # ---- data files (inspect FILE)
    ("data-missing", inspect_args("missing.jsonl"), "data file not found"),
    ("data-symlink-loop", inspect_args("loop.jsonl"), "data path {d}/loop.jsonl is a symlink loop"),
    ("data-dangling-link", inspect_args("dangling.jsonl"), "data path {d}/dangling.jsonl is a link to a missing file"),
    ("data-empty-folder", inspect_args("nofiles"), "no 'train' data files (JSON, JSONL, CSV, Parquet)"),
    ("data-unsupported", inspect_args("notes.txt"), "notes.txt: unsupported file type"),
    ("data-empty-jsonl", inspect_args("empty.jsonl"), "empty.jsonl is empty (0 bytes)"),
    ("data-empty-csv", inspect_args("empty.csv"), "empty.csv is empty (0 bytes)"),
    ("data-empty-parquet", inspect_args("empty.parquet"), "empty.parquet is empty (0 bytes)"),
    ("data-blank-lines", inspect_args("blank.jsonl"), "blank.jsonl is empty (only blank lines)"),
    ("data-latin1-jsonl", inspect_args("latin1.jsonl"), "latin1.jsonl is not UTF-8 text (byte 0xe9 on line 2)"),
    ("data-latin1-json", inspect_args("latin1.json"), "latin1.json is not UTF-8 text (byte 0xe9 on line 1)"),
    ("data-latin1-csv", inspect_args("latin1.csv"), "latin1.csv is not UTF-8 text (byte 0xe9 on line 3)"),
    ("data-utf16-csv", inspect_args("utf16.csv"), "utf16.csv is UTF-16 text; CSV files must be UTF-8"),
    ("data-random-csv", inspect_args("random.csv"), "random.csv is a binary file, not CSV text"),
    ("data-executable-csv", inspect_args("python.csv"), "python.csv is a binary file, not CSV text"),
    ("data-random-jsonl", inspect_args("random.jsonl"), "random.jsonl is a binary file, not JSON text"),
    ("data-random-parquet", inspect_args("random.parquet"), "random.parquet is not a Parquet file (it does not start with PAR1)"),
    ("data-csv-named-parquet", inspect_args("text.parquet"), "text.parquet is not a Parquet file"),
    ("data-truncated-parquet", inspect_args("truncated.parquet"),
     "truncated.parquet is not valid Parquet: Parquet magic bytes not found"),
    ("data-parquet-bad-footer", inspect_args("footer.parquet"),
     "footer.parquet is not valid Parquet: Couldn't deserialize thrift"),
    ("data-csv-long-rows", inspect_args("ragged.csv"), "ragged.csv has rows with more fields than its header"),
    ("data-csv-unterminated-quote", inspect_args("quote.csv"),
     "quote.csv is not valid CSV: Error tokenizing data. C error: EOF inside string"),
    ("data-csv-header-only", inspect_args("header.csv"), "header.csv has a header line but no rows"),
    ("data-not-json", inspect_args("prose.jsonl"), "prose.jsonl is not JSON: line 1 does not parse (Expecting value at column 1)"),
    ("data-not-json-late", inspect_args("late.jsonl"), "late.jsonl is not JSON: line 3 does not parse"),
    ("data-jsonl-numbers", inspect_args("numbers.jsonl"), "numbers.jsonl holds a JSON number on line 1, not an object"),
    ("data-json-scalar", inspect_args("scalar.json"), "scalar.json holds a JSON string on line 1, not an object"),
    ("data-json-null", inspect_args("null.json"), "null.json holds a JSON null on line 1"),
    ("data-json-array-of-numbers", inspect_args("numarray.json"), "numarray.json is a JSON array of numbers, not of objects"),
    ("data-json-array-of-strings", inspect_args("strarray.json"), "strarray.json is a JSON array of strings, not of objects"),
    ("data-json-empty-array", inspect_args("emptyarray.json"), "emptyarray.json holds an empty JSON array: no rows"),
    ("data-json-broken-array", inspect_args("badarray.json"),
     "badarray.json is not valid JSON: Expecting value: line 1 column 12"),
    ("data-json-deep", inspect_args("deep.json"), "deep.json is nested too deeply to be a dataset"),
    ("data-json-ragged-columns", inspect_args("ragged.json"),
     "ragged.json holds columns of different lengths (prompt: 2, completion: 1)"),
    ("data-unknown-columns", inspect_args("odd.jsonl"), "could not recognise the dataset format (columns: a, q)"),
    ("data-preference", inspect_args("pref.jsonl"), "this is preference data (chosen/rejected pairs)"),
    ("data-eval-fraction-takes-every-row", inspect_args("four.jsonl", "data.eval_fraction=0.99"),
     "data.eval_fraction 0.99 of 4 usable rows leaves no row to train on"),
    ("train-eval-fraction-takes-every-row", T("data.dataset={d}/four.jsonl", "data.eval_fraction=0.9"),
     "data.eval_fraction 0.9 of 4 usable rows leaves no row to train on"),
    ("pairs-eval-fraction-takes-every-pair", pairs_args("pairs4.jsonl", "data.eval_fraction=0.95"),
     "data.eval_fraction 0.95 of 4 usable rows leaves no row to train on"),
    ("data-split-of-one-file", inspect_args("good.jsonl", "data.split=test"),
     "{d}/good.jsonl is one file, so it holds one split (train), not 'test'"),
    ("train-eval-split-of-one-file", T("data.eval_split=validation"),
     "{d}/good.jsonl is one file, so it holds one split (train), not 'validation'"),
    ("data-every-row-lacks-a-column", inspect_args("halves.jsonl"),
     "no usable rows in {d}/halves.jsonl: format prompt_completion, columns completion, prompt; dropped 2 missing a "
     "prompt or an answer column"),
    # ---- preference pairs (inspect FILE --set training.objective=dpo) and DPO settings
    ("pairs-not-preference", pairs_args("good.jsonl"),
     "training.objective dpo needs preference pairs: chosen and rejected columns (found: completion, prompt)"),
    ("pairs-identical", pairs_args("pair-same.jsonl"), "dropped 2 identical answers"),
    ("pairs-empty-chosen", pairs_args("pair-empty.jsonl"), "dropped 1 empty chosen answer"),
    ("pairs-empty-prompt", pairs_args("pair-noprompt.jsonl"), "dropped 1 empty prompt"),
    ("pairs-number-answer", pairs_args("pair-number.jsonl"), "dropped 1 non-text rejected answer"),
    ("pairs-no-shared-prompt", pairs_args("pair-split.jsonl"), "dropped 1 chosen and rejected do not share a prompt"),
    ("pairs-answer-not-assistant", pairs_args("pair-userlast.jsonl"), "dropped 1 rejected answer is not an assistant turn"),
    ("pairs-prompt-fills-max-length", pairs_args("pair-long.jsonl", "training.max_length=16"),
     "no pair of {d}/pair-long.jsonl leaves room for an answer within training.max_length 16"),
    ("pairs-columns-missing", pairs_args("pref.jsonl", "data.columns={chosen: better}"),
     "(chosen: better); its columns are: chosen, prompt, rejected"),
    ("set-objective", T("training.objective=ppo"), "training.objective: 'ppo' is not one of sft, dpo"),
    ("set-beta-zero", T("training.objective=dpo", "training.beta=0"), "training.beta: 0.0 is outside (0, 100]"),
    ("set-loss-type", T("training.loss_type=kto"), "training.loss_type: 'kto' is not one of sigmoid, ipo"),
    ("set-dpo-packing", T("training.objective=dpo", "training.packing=true"),
     "training.packing: packs SFT rows; DPO's pairs are not packed"),
    ("train-init-adapter-missing", T("model.init_adapter={d}/no-sft-run", "output.dir={d}/run-init"),
     "adapter not found: {d}/no-sft-run"),
    ("train-init-adapter-other-base", T("model.init_adapter={d}/adapter", "output.dir={d}/run-other-base"),
     "model.init_adapter: {d}/adapter was trained on"),
    # ---- runs, chat and push
    # refused before training starts: the run folder (made for it) is gone again, nothing else changed
    ("train-data-missing", T("data.dataset={d}/gone-for-train.jsonl"), "data file not found: {d}/gone-for-train.jsonl"),
    ("train-data-unusable", T("data.dataset={d}/pref.jsonl", "output.dir={d}/deep/new/run"),
     "which is for DPO, not supervised fine-tuning"),
    ("train-base-not-a-model", T("model.base={d}/nofiles"), "load model {d}/nofiles failed"),
    ("train-resume-nothing", T("output.dir={d}/run-to-resume") + ["--resume"], "--resume: no checkpoint in {d}/run-to-resume"),
    ("train-output-dir-is-a-file", T("output.dir={d}/notes.txt"), "output.dir: {d}/notes.txt is a file, not a folder"),
    ("train-output-dir-root", T("output.dir=/"), "output.dir: / is not empty and holds no run of this app"),
    ("train-output-dir-someones-folder", T("output.dir={d}/someones"),
     "output.dir: {d}/someones is not empty and holds no run of this app (README.md, config.yaml, tokenizer.json)"),
    ("train-output-dir-in-use", T("output.dir={d}/busy"), "output.dir: {d}/busy is in use by another run"),
    ("train-output-dir-holds-a-run", T("output.dir={d}/adapter"), "output.dir: {d}/adapter already holds a run"),
    ("chat-negative-max-new-tokens", ["chat", "--adapter", "{d}/adapter", "--max-new-tokens", "-5", "--prompt", "hi"],
     "max_new_tokens: -5 must be at least 1"),
    ("chat-negative-temperature", ["chat", "--adapter", "{d}/adapter", "--temperature", "-1", "--prompt", "hi"],
     "temperature: -1.0 must be in [0, 2] (0 = greedy)"),
    ("chat-top-p-zero", ["chat", "--adapter", "{d}/adapter", "--top-p", "0", "--prompt", "hi"], "top_p: 0.0 must be in (0, 1]"),
    ("chat-folder-without-adapter", ["chat", "--adapter", "{d}/nofiles", "--prompt", "hi"], "nofiles holds no adapter"),
    ("chat-missing-adapter", ["chat", "--adapter", "{d}/no-such-run", "--prompt", "hi"], "adapter not found: {d}/no-such-run"),
    ("chat-adapter-config-not-json", ["chat", "--adapter", "{d}/badjson", "--prompt", "hi"],
     "the adapter {d}/badjson is damaged: its adapter_config.json is not JSON (Expecting value: line 1 column 1"),
    ("chat-adapter-config-names-no-base", ["chat", "--adapter", "{d}/nobase", "--prompt", "hi"],
     "the adapter {d}/nobase is damaged: its adapter_config.json names no base model"),
    ("merge-adapter-config-not-json", ["merge", "{d}/badjson", "--out", "{d}/merged"],
     "the adapter {d}/badjson is damaged"),
    ("export-adapter-config-not-json", ["export", "{d}/badjson", "--out", "{d}/gguf"],
     "the adapter {d}/badjson is damaged: its adapter_config.json is not JSON"),
    ("chat-truncated-adapter", ["chat", "--adapter", "{d}/adapter", "--prompt", "hi"], "/adapter are damaged"),
    ("push-no-adapter", ["push", "{d}/nofiles"], "{d}/nofiles holds no finished adapter"),
    # ---- names no Hub ID or path can have; folders that are files
    ("inspect-hub-id-with-dots", ["inspect", "foo/..bar", "--set", f"model.base={FIXTURE}"],
     "data.dataset: 'foo/..bar' is not a valid Hub ID (letters, digits, '-', '_' and '.'; no '--' or '..'"),
    ("set-base-hub-id-with-dashes", T("model.base=acme/tiny--phi3"), "model.base: 'acme/tiny--phi3' is not a valid Hub ID"),
    ("set-push-to-with-dots", T("output.push_to=me/..adapter"),
     "output.push_to: 'me/..adapter' is not a repo ID like your-name/my-adapter"),
    ("chat-hub-id-with-dots", ["chat", "--adapter", "foo/..bar", "--prompt", "hi"], "adapter: 'foo/..bar' is not a valid Hub ID"),
    ("eval-hub-id-with-dots", ["eval", "foo/bar.."], "adapter: 'foo/bar..' is not a valid Hub ID"),
    ("eval-data-hub-id-with-dots", ["eval", "{d}/adapter", "--data=foo/bar-"], "'foo/bar-' is not a valid Hub ID"),
    ("inspect-nul-in-dataset", ["inspect", "x\0y.jsonl"], "data.dataset: 'x\\x00y.jsonl' holds the control character '\\x00'"),
    ("set-dataset-escape", T("data.dataset=data\x1b[31m.jsonl"), "holds the control character '\\x1b'"),
    ("set-output-dir-control-character", T("output.dir={d}/run\tb"),
     "output.dir: '{d}/run\\tb' holds the control character '\\t'; a Hub ID or a path has none"),
    ("data-lone-surrogate", inspect_args("surrogate.jsonl"),
     "surrogate.jsonl: line 1 holds a lone surrogate escape (\\ud800-\\udfff), which is not text"),
    ("data-json-lone-surrogates", inspect_args("surrogates.json"), "surrogates.json: every row holds a lone surrogate"),
    ("eval-run-dir-is-a-file", ["eval", "{d}/adapter", "--run-dir", "{d}/notes.txt"],
     "--run-dir: {d}/notes.txt is a file, not a folder"),
    ("export-run-dir-is-a-file", ["export", "{d}/adapter", "--out", "{d}/gguf", "--run-dir", "{d}/good.yaml"],
     "--run-dir: {d}/good.yaml is a file, not a folder"),
    ("merge-run-dir-is-a-file", ["merge", "{d}/adapter", "--out", "{d}/merged", "--run-dir", "{d}/good.jsonl"],
     "--run-dir: {d}/good.jsonl is a file, not a folder"),
    ("eval-source-is-a-file", ["eval", "{d}/notes.txt"], "adapter not found: {d}/notes.txt"),
]


def alias_bomb() -> str:
    """A 'billion laughs' run config: 9 levels of 9 aliases, 9**9 * 9 strings once expanded (about 3 GB as text)."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{cur}: &{cur} [{','.join([f'*{prev}'] * 9)}]" for prev, cur in zip("abcdefgh", "bcdefghi")]
    return "\n".join(lines + ["model: {base: *i, method: *i}", "data: {dataset: *i, split: *i}",
                              "output: {dir: *i, push_to: *i}", "training: {lr_scheduler: *i}", ""])


def write_inputs(d):
    """All the files the cases name, good and bad, in one folder."""
    import pandas as pd

    def write(name, content):
        path = d / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path

    good_row = {"prompt": "What is the capital of Zorbia?", "completion": "Flimflam."}
    write("good.jsonl", json.dumps(good_row) + "\n")
    good = {"model": {"base": str(FIXTURE)}, "data": {"dataset": str(d / "good.jsonl"), "eval_fraction": 0},
            "training": {"max_steps": 1}, "output": {"dir": str(d / "run")}}
    write("good.yaml", yaml.safe_dump(good))

    (d / "configs").mkdir()
    (d / "nofiles").mkdir()
    for stem in ("loop.yaml", "loop.jsonl"):
        os.symlink(d / stem, d / stem)
    os.symlink(d / "gone.yaml", d / "dangling.yaml")
    os.symlink(d / "gone.jsonl", d / "dangling.jsonl")

    write("latin1.yaml", "model:\n  method: lora\ndata: {dataset: café.jsonl}\n".encode("latin-1"))
    write("utf16.yaml", yaml.safe_dump(good).encode("utf-16"))
    write("binary.yaml", b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    write("big.yaml", yaml.safe_dump(good) + "# padding\n" * 7000)
    write("bomb.yaml", alias_bomb())
    write("broken.yaml", "model: [unclosed\n")
    write("list.yaml", "- model\n- data\n")
    write("scalar.yaml", "just some text\n")
    write("deep.yaml", "[" * 2000 + "]" * 2000)
    write("baddate.yaml", "data: {dataset: 2024-13-45}\n")
    write("section.yaml", yaml.safe_dump({**good, "training": 5}))
    write("token.yaml", yaml.safe_dump({**good, "output": {"push_to": TOKEN}}))
    write("nan.yaml", yaml.safe_dump({**good, "training": {"learning_rate": float("nan")}}))
    write("flat.yaml", "num_train_epochs: 3\ndata: {dataset: x.jsonl}\n")

    write("notes.txt", "some notes\n")
    for name in ("empty.jsonl", "empty.csv", "empty.parquet"):
        write(name, b"")
    write("blank.jsonl", "\n  \n\n")
    write("latin1.jsonl", (json.dumps(good_row) + '\n{"prompt": "caf\xe9", "completion": "x"}\n').encode("latin-1"))
    write("latin1.json", '[{"prompt": "caf\xe9", "completion": "x"}]'.encode("latin-1"))
    write("latin1.csv", "prompt,completion\nq,a\ncaf\xe9,ol\xe9\n".encode("latin-1"))
    write("utf16.csv", "prompt,completion\nq,a\n".encode("utf-16"))
    write("random.csv", bytes(range(256)) * 16)
    with open(sys.executable, "rb") as fh:
        write("python.csv", fh.read(16384))
    write("random.jsonl", b"\x00\xff" * 500)
    write("random.parquet", bytes(reversed(range(256))) * 16)
    write("text.parquet", "prompt,completion\nq,a\n")
    pd.DataFrame([good_row] * 3).to_parquet(d / "whole.parquet")
    whole = bytearray((d / "whole.parquet").read_bytes())
    write("truncated.parquet", bytes(whole[:-20]))
    footer = int.from_bytes(whole[-8:-4], "little")  # a Parquet file ends: metadata, its length, PAR1
    whole[-8 - footer:-8] = b"\xff" * footer
    write("footer.parquet", bytes(whole))
    write("ragged.csv", "prompt,completion\nq,a,extra,more\n")
    write("quote.csv", 'prompt,completion\n"unterminated,answer\nq2,a2\n')
    write("header.csv", "prompt,completion\n")
    write("prose.jsonl", "These are my notes about the model.\nNot JSON at all.\n")
    write("late.jsonl", "\n\nnot json\n")
    write("numbers.jsonl", "1\n2\n3\n")
    write("scalar.json", '"hello"\n')
    write("null.json", "null\n")
    write("numarray.json", "[1, 2, 3]")
    write("strarray.json", '["a", "b"]')
    write("emptyarray.json", "[]")
    write("badarray.json", '[{"a": 1}, ')
    write("deep.json", "[" * 100_000)
    write("ragged.json", json.dumps({"prompt": ["q1", "q2"], "completion": ["a1"]}))
    write("odd.jsonl", json.dumps({"q": "x", "a": "y"}) + "\n")
    write("pref.jsonl", json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    write("four.jsonl", "".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(4)))
    write("pairs4.jsonl", "".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}) + "\n"
                                  for i in range(4)))
    write("surrogate.jsonl", '{"prompt": "caf\\ud800", "completion": "x"}\n')
    write("surrogates.json", '[{"prompt": "q\\udfff", "completion": "x"}]')
    write("some-surrogates.jsonl", json.dumps(good_row) + '\n{"prompt": "\\udc00", "completion": "x"}\n'
          + json.dumps({"prompt": "smile \U0001F600", "completion": "ok"}, ensure_ascii=True) + "\n")
    write("halves.jsonl", json.dumps({"prompt": "q"}) + "\n" + json.dumps({"completion": "a"}) + "\n")
    write("lacking.jsonl", "".join(json.dumps(r) + "\n" for r in (good_row, {"prompt": "q2"}, good_row)))
    (d / "two-kinds").mkdir()
    write("two-kinds/train.jsonl", json.dumps(good_row) + "\n")
    write("two-kinds/train.csv", "question,answer\nWhere?,Here.\n")
    write("two-kinds/test.csv", "text\nhello\n")
    lines = lambda *rows: "".join(json.dumps(r) + "\n" for r in rows)  # noqa: E731
    write("pair-same.jsonl", lines({"prompt": "q", "chosen": "a", "rejected": "a"},
                                   {"prompt": "q2", "chosen": "b ", "rejected": "b"}))
    write("pair-empty.jsonl", lines({"prompt": "q", "chosen": " ", "rejected": "b"}))
    write("pair-noprompt.jsonl", lines({"prompt": "", "chosen": "a", "rejected": "b"}))
    write("pair-number.jsonl", lines({"prompt": "q", "chosen": "a", "rejected": 5}))
    user, bot = lambda t: {"role": "user", "content": t}, lambda t: {"role": "assistant", "content": t}  # noqa: E731
    write("pair-split.jsonl", lines({"chosen": [user("q1"), bot("a")], "rejected": [user("q2"), bot("b")]}))
    write("pair-userlast.jsonl", lines({"chosen": [user("q"), bot("a")], "rejected": [user("q"), bot("b"), user("c")]}))
    write("pair-long.jsonl", lines({"prompt": "tell me " * 40, "chosen": "a", "rejected": "b"}))


def write_truncated_adapter(folder, base):
    """An adapter whose weights file was cut short (a copy that stopped, a full disk)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules="all-linear")).save_pretrained(folder)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])


SOMEONES = {"README.md": "# my notes\n", "config.yaml": "mine: true\n", "tokenizer.json": "{}"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_model):
    import fcntl

    d = tmp_path_factory.mktemp("bad-inputs")
    write_inputs(d)
    write_truncated_adapter(d / "adapter", tiny_model)
    for name, text in (("badjson", "<html>not json</html>"), ("nobase", '{"r": 8}')):
        (d / name).mkdir()
        (d / name / "adapter_config.json").write_text(text)
    (d / "someones").mkdir()
    for name, text in SOMEONES.items():
        (d / "someones" / name).write_text(text)
    (d / "busy").mkdir()
    with open(d / "busy" / ".phi3space.lock", "w") as held:  # another run holds this folder while the cases run
        fcntl.flock(held, fcntl.LOCK_EX)
        yield d


def snapshot(d) -> dict:
    """Every file under the folder with its size and time of change: what a case must leave as it was."""
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in d.rglob("*")}


def run_cli(capsys, argv):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("argv,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_and_one_hint(folder, capsys, argv, fragment):
    argv = [a.replace("{d}", str(folder)) for a in argv]
    before = snapshot(folder)
    code, _, err = run_cli(capsys, argv)
    assert snapshot(folder) == before, "a refused command left files behind or changed the user's"
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert sum(line.startswith("error:") for line in lines) == 1, err
    assert lines[0].startswith("error:") and sum(line.startswith("hint:") for line in lines) == 1, err
    assert fragment.replace("{d}", str(folder)) in err, err
    if TOKEN in " ".join(argv) or "access token" in fragment:
        assert TOKEN not in err and TOKEN_HINT in err, err


# Inputs that are read, with their bad rows dropped and counted: id, argv, fragments of the report.
DROPPED = [
    ("data-a-row-lacks-a-column", inspect_args("lacking.jsonl"),
     ["rows: 3 read, 2 kept, 1 dropped", "dropped 1: missing a prompt or an answer column"]),
    ("data-some-lone-surrogates", inspect_args("some-surrogates.jsonl"),
     ["rows: 3 read, 2 kept, 1 dropped", "dropped 1: a lone surrogate escape (\\ud800-\\udfff), which is not text"]),
    ("data-folder-of-jsonl-and-csv", inspect_args("two-kinds"), ["rows: 2 read, 2 kept, 0 dropped"]),
    ("data-folder-split-with-another-format", inspect_args("two-kinds", "data.split=test"),
     ["format: text (columns: text)", "rows: 1 read, 1 kept"]),
]


@pytest.mark.parametrize("argv,fragments", [c[1:] for c in DROPPED], ids=[c[0] for c in DROPPED])
def test_bad_rows_are_dropped_and_counted(folder, capsys, argv, fragments):
    code, out, err = run_cli(capsys, [a.replace("{d}", str(folder)) for a in argv])
    assert code == 0 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in out, out


def test_cases_are_distinct_and_plenty():
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES) and len({c[2] for c in CASES}) == len(CASES)


def test_good_inputs_in_the_same_folder_still_work(folder, capsys):
    """After all the bad cases: the good config validates and the good data inspects."""
    cfg = config.load(folder / "good.yaml")
    assert cfg.data.dataset == str(folder / "good.jsonl") and cfg.training.max_steps == 1
    code, out, err = run_cli(capsys, ["inspect", str(folder / "good.jsonl"), "--set", f"model.base={FIXTURE}"])
    assert code == 0, err
    assert "format: prompt_completion" in out and "[[Flimflam.<|end|><|endoftext|>]]" in out
    assert {p.name: p.read_text() for p in (folder / "someones").iterdir()} == SOMEONES


@pytest.mark.parametrize("setting, fragment", [("output.dir={d}/someones", "holds no run of this app"),
                                               ("output.dir={d}/busy", "is in use"),
                                               ("output.dir={d}/adapter", "already holds a run"),
                                               ("output.push_to=someone/x", "no Hugging Face token")])
def test_a_run_refused_for_its_folder_or_its_push_answers_before_the_libraries_load(folder, setting, fragment):
    """In a process of its own (as a person runs it): these refusals come before torch, transformers or datasets
    are imported (seconds of a refused run's time)."""
    import subprocess

    from helpers import ROOT

    check = ("import sys\nfrom phi3space import cli\ncode = cli.main(sys.argv[1:])\n"
             "print(code, sorted(m for m in ('torch', 'transformers', 'datasets', 'peft', 'trl') if m in sys.modules))")
    argv = [a.replace("{d}", str(folder)) for a in T("output.dir={d}/refused-run", setting)]
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    done = subprocess.run([sys.executable, "-c", check, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=env)
    assert fragment in done.stderr and done.stdout.splitlines()[-1] == "2 []", (done.stdout, done.stderr)


def test_alias_bomb_is_refused_before_it_expands(folder):
    """The bomb of the hardening issue took 3 GB through str(); refused while composing, it costs nothing."""
    text = alias_bomb()
    assert len(text.encode()) < 500
    with pytest.raises(ConfigError, match=r"alias \*a"):
        config.loads(text)
    with pytest.raises(ConfigError, match=r"alias \*a"):
        config.load(folder / "bomb.yaml")


def test_the_readme_counts_these_cases():
    from helpers import ROOT

    readme = (ROOT / "README.md").read_text()
    assert f"a table of {len(CASES)} cases" in readme and f"{len(DROPPED)} more are read" in readme
