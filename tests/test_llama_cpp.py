"""The exported GGUF where people run GGUFs: a real llama.cpp (node-llama-cpp's prebuilt binaries, tests/llama.py)
reads the file phi3space wrote and must tokenize as transformers does, render the chat as transformers does with its
own template engine, put no BOS where training had none, and answer what the model learned: the same greedy tokens
as the merged model in transformers from f16, the trained answers from q8_0. A tiny Phi-3.5 / 128k-context model
(long-rope factors, Phi-3.5's template) loads and answers as transformers does too."""

import json

import pytest
from helpers import QA_PAIRS, build_phi3

from phi3space import cli

pytestmark = pytest.mark.slow

END_IDS = (32000, 32001, 32007)  # Phi-3's generation stops: <|endoftext|>, <|assistant|>, <|end|>

# What tokenizers get wrong: spaces (leading, double, trailing, alone), newlines and spaces after special tokens,
# scripts other than Latin, digits, code, byte fallback, the special tokens themselves, and a whole chat.
TEXTS = [
    " leading space", "  two leading", "trailing  ", "   ", "x", "The Punjab", "double  space  inside",
    "\n\nnewlines\n", "<|user|>\nhi<|end|>", "<|user|>\n  spaced<|end|>\n<|assistant|>\n", "<|system|>\n\nBe brief.<|end|>",
    "a<|endoftext|>b", "</s>after", "<s>x</s>", "<unk>?",
    "日本語のテキストです。", "Привет, мир!", "مرحبا بالعالم", "हिन्दी पाठ", "한국어 문장", "Ελληνικά", "ไทย",
    "1234567890", "3.14159 2.71828 1e-9 -42 +7", "2026-12-05T08:41:19Z", "$1,234.56 €9.99",
    "def f(x):\n    return x ** 2  # square\n", "\tif (a && b) { return 0; }\n", "SELECT name FROM t WHERE id = 3;",
    "emoji 🎉🚀 ok", "\u200b zero width", "café naïve Ångström", "ÿþ\x01\x7f", "https://huggingface.co/microsoft/Phi-3",
]
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of Zorbia?"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Teal."}, {"role": "user", "content": "  Another one?\n"}],
]


QUANTS = ("f16", "q8_0")


@pytest.fixture(scope="module")
def exported(trained_run, build_once):
    """The trained run exported as f16 and q8_0 by the CLI (once per test run): {quant: path}."""
    def export(out):
        for quant in QUANTS:
            assert cli.main(["export", str(trained_run), "--quant", quant, "--out", str(out)]) == 0

    out = build_once("gguf", export)
    return {quant: out / f"{trained_run.name}-{quant.upper()}.gguf" for quant in QUANTS}


def metadata(path, key):
    from gguf import GGUFReader

    return GGUFReader(path).fields[key].contents()


def greedy(model, tokenizer, messages, max_new_tokens=32) -> list[int]:
    """transformers' greedy reply, up to (without) Phi-3's first stop token."""
    import torch

    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=list(END_IDS),
                             pad_token_id=0)
    reply = out[0, enc["input_ids"].shape[1]:].tolist()
    return next((reply[:i] for i, t in enumerate(reply) if t in END_IDS), reply)


def until_stop(tokens: list[int]) -> list[int]:
    return next((tokens[:i] for i, t in enumerate(tokens) if t in END_IDS), tokens)


def test_llama_cpp_tokenizes_every_text_as_transformers_does(exported, llama_cpp, tokenizer):
    chat = tokenizer.apply_chat_template(CONVERSATIONS[2], tokenize=False, add_generation_prompt=True)
    texts = TEXTS + [chat]
    got = llama_cpp.read(exported["f16"], texts=texts)
    wrong = [(text, tokenizer.convert_ids_to_tokens(ids), tokenizer.tokenize(text))
             for text, ids in zip(texts, got["texts"]) if ids != tokenizer(text, add_special_tokens=False)["input_ids"]]
    assert wrong == []
    assert got["prepends_bos"] is False  # training never saw <s> before a prompt
    assert got["eos"] == got["eot"] == tokenizer.convert_tokens_to_ids("<|end|>")
    assert "control-looking token" not in got["log"]  # the token types are what llama.cpp expects (no load warning)
    assert "phi-3" in metadata(exported["f16"], "general.name").lower()  # llama.cpp's Phi-3 whitespace rule


def test_llama_cpps_template_engine_renders_the_chat_as_transformers_does(exported, llama_cpp, tokenizer):
    template = metadata(exported["f16"], "tokenizer.chat_template")
    assert template == tokenizer.chat_template  # the base's own template, which Ollama and llama.cpp recognise
    for messages in CONVERSATIONS:
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert llama_cpp.render(template, messages) == expected


def test_llama_cpp_gives_the_trained_answers_from_f16_and_q8_0(exported, llama_cpp, trained_run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from phi3space.engine.merge import merge_adapter
    from phi3space.engine.modeling import load_tokenizer

    folder = merge_adapter(str(trained_run), tmp_path / "merged")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), load_tokenizer(str(folder))
    asked = [[{"role": "user", "content": q}] for q, _ in QA_PAIRS]
    prompts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in asked]
    expected = [greedy(model, tokenizer, m) for m in asked]
    assert [tokenizer.decode(t) for t in expected] == [a for _, a in QA_PAIRS]  # what transformers answers

    f16 = llama_cpp.read(exported["f16"], prompts=prompts)
    assert [until_stop(r["tokens"]) for r in f16["replies"]] == expected  # token for token
    q8 = llama_cpp.read(exported["q8_0"], prompts=prompts)
    assert [r["text"].strip() for r in q8["replies"]] == [a for _, a in QA_PAIRS]


PHI35_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
                  "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
                  "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
                  "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
                  "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")


@pytest.fixture(scope="module")
def long_context_adapter(tmp_path_factory):
    """A tiny Phi-3.5-mini-shaped model (128k context with long-rope factors, Phi-3.5's chat template) and a LoRA
    adapter on it with random, non-zero updates: (adapter folder, base folder)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = tmp_path_factory.mktemp("phi35-base")
    head_dim = 64 // 4
    factors = [1.0 + 0.25 * i for i in range(head_dim // 2)]
    build_phi3(base, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
               intermediate_size=128, initializer_range=0.2, max_position_embeddings=131072,
               original_max_position_embeddings=4096,
               rope_scaling={"type": "longrope", "long_factor": factors, "short_factor": factors[::-1]})
    config = json.loads((base / "tokenizer_config.json").read_text())
    config["chat_template"] = PHI35_TEMPLATE
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    adapter = tmp_path_factory.mktemp("phi35-adapter")
    model.save_pretrained(adapter)
    return adapter, base


def test_a_phi35_long_context_export_loads_and_answers_as_transformers(long_context_adapter, llama_cpp, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from phi3space.engine.merge import merge_adapter
    from phi3space.engine.modeling import load_tokenizer

    adapter, base = long_context_adapter
    assert cli.main(["export", str(adapter), "--quant", "f16", "--out", str(tmp_path / "out"), "--name", "tiny35"]) == 0
    gguf = tmp_path / "out" / "tiny35-F16.gguf"
    model = AutoModelForCausalLM.from_pretrained(merge_adapter(str(adapter), tmp_path / "merged"), dtype=torch.float32)
    tokenizer = load_tokenizer(str(base))
    template = metadata(gguf, "tokenizer.chat_template")
    assert template == PHI35_TEMPLATE
    asked = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Count to {n}."}] for n in (3, 7)]
    prompts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in asked]
    assert [llama_cpp.render(template, m) for m in asked] == prompts

    got = llama_cpp.read(gguf, texts=prompts, prompts=prompts, max_tokens=8)
    assert got["texts"] == [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    expected = [greedy(model.eval(), tokenizer, m, max_new_tokens=8) for m in asked]
    assert [until_stop(r["tokens"]) for r in got["replies"]] == expected
