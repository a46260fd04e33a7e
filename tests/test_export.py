"""Export: `python -m phi3space export RUN --quant f16|bf16|q8_0 --out DIR` merges the adapter into its base and writes one
GGUF file and an Ollama Modelfile. Each file is read back by transformers' own GGUF loader and gives the merged model's
next-token logits (f16 and bf16 closely, q8_0 within the tolerance of 8-bit blocks); gguf's reader finds the Phi-3 chat
template and <|end|> as end-of-generation in the metadata; --push-to uploads both with a card that runs them."""

import os
import shlex
import signal
import subprocess
import time

import pytest
from helpers import CANARY as ALICE
from helpers import QA_PAIRS, start_cli

from phi3space import cli
from phi3space.engine.export import OLLAMA_TEMPLATE
from phi3space.run import RunDir

pytestmark = pytest.mark.slow

PROMPTS = [[{"role": "user", "content": q}] for q, _ in QA_PAIRS[:3]] + [[{"role": "user", "content": "Hello there"}]]
# Largest difference of a next-token logit from the merged model's, as a share of the largest logit (about 10 for
# the tiny model): f16 rounds each weight to 11 significant bits, bf16 to 8; q8_0 stores blocks of 32 weights as 8-bit integers with one
# scale each, and the tiny model's wide random weights make that coarser than on a real Phi-3.
TOLERANCE = {"f16": 0.005, "bf16": 0.02, "q8_0": 0.05}


@pytest.fixture(scope="module")
def merged(trained_run, build_once):
    """The merged model (16-bit base + adapter, merged once per test run) in float32, and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    from phi3space.engine.merge import merge_adapter
    from phi3space.engine.modeling import load_tokenizer

    folder = build_once("merged", lambda out: merge_adapter(str(trained_run), out))
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), load_tokenizer(str(folder))


def next_token_logits(model, tokenizer):
    import torch

    out = []
    for messages in PROMPTS:
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out.append(model(**enc).logits[0, -1])
    return torch.stack(out)


def field(reader, key):
    f = reader.fields[key]
    return f.contents()


@pytest.mark.parametrize("quant", ["f16", "bf16", "q8_0"])
def test_export_reads_back_as_the_merged_model(quant, trained_run, merged, tmp_path, capsys):
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    assert cli.main(["export", str(trained_run), "--quant", quant, "--out", str(out), "--system", "Answer briefly.",
                     "--temperature", "0.2", "--run-dir", str(tmp_path / "job")]) == 0
    name = f"{trained_run.name}-{quant.upper()}.gguf"
    assert sorted(p.name for p in out.iterdir()) == sorted(["Modelfile", name])

    model, tokenizer = merged
    loaded = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32).eval()
    expected, got = next_token_logits(model, tokenizer), next_token_logits(loaded, tokenizer)
    assert (expected - got).abs().max() / expected.abs().max() < TOLERANCE[quant]
    assert torch.equal(expected.argmax(-1), got.argmax(-1))  # the same greedy next token on every prompt

    reader = GGUFReader(out / name)
    assert field(reader, "general.architecture") == "phi3"
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    assert field(reader, "tokenizer.ggml.eos_token_id") == field(reader, "tokenizer.ggml.eot_token_id") == end
    assert field(reader, "tokenizer.ggml.tokens")[end] == "<|end|>"
    template = field(reader, "tokenizer.chat_template")
    assert "<|assistant|>" in template and "<|end|>" in template and "{% generation %}" not in template and "endgeneration" not in template
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_qkv.weight"] == quant.upper() and kinds["blk.0.attn_norm.weight"] == "F32"

    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{name}\n")
    assert f'TEMPLATE """{OLLAMA_TEMPLATE}"""' in modelfile and 'PARAMETER stop "<|end|>"' in modelfile
    assert 'SYSTEM """Answer briefly."""' in modelfile and "PARAMETER temperature 0.2" in modelfile
    state = RunDir(tmp_path / "job").state()
    assert state.status == "completed" and state.exported == [name, "Modelfile"]
    assert state.step == state.max_steps == 4  # every stage counted: adapter, base, merge and write, Modelfile
    printed = capsys.readouterr().out
    assert f"wrote {out / name}" in printed and f"llama-cli -m {out / name}" in printed  # the next command to run


def test_export_pushes_the_file_and_modelfile_with_a_card_that_runs_them(trained_run, alice, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ALICE)
    monkeypatch.setenv("PHI3SPACE_RETRY_BASE_S", "0")
    job = tmp_path / "job"
    assert cli.main(["export", str(trained_run), "--quant", "q8_0", "--out", str(tmp_path / "out"), "--push-to", "auto",
                     "--run-dir", str(job)]) == 0
    repo = f"alice/{trained_run.name}-GGUF"
    files = alice.files(repo)
    name = f"{trained_run.name}-Q8_0.gguf"
    assert {name, "Modelfile", "README.md"} <= set(files) and alice.repo(repo)["private"] is True
    card = files["README.md"].decode()
    assert f"ollama run hf.co/{repo}:Q8_0" in card and f"llama-cli -hf {repo}:Q8_0" in card
    assert f"llama-server -hf {repo}:Q8_0" in card and "library_name: gguf" in card and "Q4_K_M" in card

    # The card's download line, run as a person pastes it (the real `hf` CLI, here against the Hub stand-in),
    # brings the file and the Modelfile that names it.
    download = next(line for line in card.splitlines() if line.startswith("hf download "))
    folder = tmp_path / "home"
    folder.mkdir()
    done = subprocess.run(shlex.split(download), cwd=folder, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_TOKEN": ALICE})
    assert done.returncode == 0, done.stderr
    local = folder / shlex.split(download)[-1]
    assert (local / name).read_bytes() == files[name]
    assert (local / "Modelfile").read_text().startswith(f"FROM ./{name}\n")
    state = RunDir(job).state()
    assert state.status == "completed" and state.model_url.endswith(repo)
    assert ALICE not in job.joinpath("events.jsonl").read_text() and ALICE.encode() not in files[name]


def test_export_refuses_k_quants_and_says_where_they_come_from(trained_run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["export", str(trained_run), "--quant", "q4_k_m", "--out", str(tmp_path)])
    assert "invalid choice: 'q4_k_m'" in capsys.readouterr().err


def test_a_killed_export_leaves_the_earlier_file_whole_and_its_part_is_reclaimed(trained_run, tmp_path):
    """The GGUF is written under a temporary name and renamed when whole: killing an export part-way leaves the file
    of an earlier export as it was (and nothing under the final name where there was none), and the next export
    removes the killed one's temporary file."""
    from phi3space.run import RunDir

    out = tmp_path / "out"
    assert cli.main(["export", str(trained_run), "--quant", "f16", "--out", str(out)]) == 0
    name = f"{trained_run.name}-F16.gguf"
    good = (out / name).read_bytes()
    (out / name).touch()  # an older modification time to compare with
    job = tmp_path / "job"
    proc = start_cli("export", str(trained_run), "--quant", "f16", "--out", str(out), "--run-dir", str(job), output=False)
    try:
        deadline = time.monotonic() + 240
        while "merging and writing" not in (RunDir(job).events.read_text() if RunDir(job).events.exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline, "the export ended before it began writing"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / name).read_bytes() == good  # never half a file under the final name
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["Modelfile", name]

    stale = out / f".{name}.{proc.pid}.part"  # what the killed export leaves when the kill lands while it writes
    stale.write_bytes(b"GGUF" + b"\0" * 20)
    alive = out / f".{name}.{os.getpid()}.part"  # a running export's (this process is alive): kept
    alive.write_bytes(b"GGUF")
    assert cli.main(["export", str(trained_run), "--quant", "q8_0", "--out", str(out)]) == 0
    assert not stale.exists() and alive.exists()
    assert (out / name).read_bytes() == good and (out / f"{trained_run.name}-Q8_0.gguf").read_bytes()[:4] == b"GGUF"
