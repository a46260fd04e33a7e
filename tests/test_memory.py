"""A small CPU machine (a cpu-basic Space: 2 vCPU, 16 GB) refuses to load a model that does not fit, before it
loads it, in chat, evaluation, merge and CPU training alike; chat falls back to bfloat16 when only that fits. The
limit is the least of the container's cgroup limit and the host's free memory; PHI3SPACE_MEMORY_LIMIT_BYTES sets it
in these tests."""

import json

import pytest
from helpers import FIXTURE, memorise_config, write_qa_jsonl

from phi3space.engine import memory
from phi3space.errors import OutOfMemory

GB = 1 << 30


def _meminfo(tmp_path, available_kb: int):
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal:       32000000 kB\nMemFree:         1000000 kB\nMemAvailable:   {available_kb} kB\n")
    return path


def test_the_memory_this_process_may_use_is_the_least_of_the_container_limit_and_the_host(tmp_path, monkeypatch):
    monkeypatch.delenv(memory.LIMIT_ENV, raising=False)
    host = _meminfo(tmp_path, 20 * 1024 * 1024)  # 20 GiB free on the host
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text(f"{16 * GB}\n")  # a cpu-basic Space's 16 GB
    (v2 / "memory.current").write_text(f"{3 * GB}\n")
    (v2 / "memory.stat").write_text(f"anon {2 * GB}\ninactive_file {1 * GB}\n")  # page cache it can reclaim
    assert memory.available_bytes(v2, host) == (14 * GB, "the container's memory limit, less what it uses")
    (v2 / "memory.max").write_text("max\n")  # no container limit: the host's
    assert memory.available_bytes(v2, host) == (20 * GB, "memory available on this machine")
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{8 * GB}\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text(f"{1 * GB}\n")
    assert memory.available_bytes(v1, host)[0] == 7 * GB
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert memory.available_bytes(v1, host)[0] == 20 * GB
    monkeypatch.setenv(memory.LIMIT_ENV, str(5 * GB))
    assert memory.available_bytes(v2, host) == (5 * GB, memory.LIMIT_ENV)


def test_parameters_are_counted_without_loading_any_weight(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    loaded = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model).parameters())
    assert memory.parameter_count(str(tiny_model)) == loaded  # from the safetensors headers
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text((tiny_model / "config.json").read_text())
    assert memory.parameter_count(str(config_only)) == loaded  # from config.json alone: the same count
    mini = memory.parameter_count(str(FIXTURE))  # Phi-3-mini-4k-instruct's own config.json
    assert mini == 3_821_079_552
    assert memory.needed_bytes(mini, "float32") > 16 * GB > memory.needed_bytes(mini, "bfloat16")  # why bf16 on CPU


def _between(tiny_model, low: str, high: str) -> int:
    params = memory.parameter_count(str(tiny_model))
    return (memory.needed_bytes(params, low) + memory.needed_bytes(params, high)) // 2


def test_chat_on_a_small_cpu_loads_bfloat16_when_float32_does_not_fit_and_refuses_when_nothing_does(tiny_model,
                                                                                                   monkeypatch):
    import torch

    from phi3space.chat.engine import ChatEngine

    monkeypatch.setenv(memory.LIMIT_ENV, str(_between(tiny_model, "bfloat16", "float32")))
    engine = ChatEngine(str(tiny_model))
    assert engine.model.dtype == torch.bfloat16
    assert engine.reply([{"role": "user", "content": "hi"}], max_new_tokens=4) is not None
    monkeypatch.setenv(memory.LIMIT_ENV, str(512 << 20))
    with pytest.raises(OutOfMemory) as refused:
        ChatEngine(str(tiny_model))
    assert "chat needs about" in refused.value.message and "PHI3SPACE_MEMORY_LIMIT_BYTES" in refused.value.message
    assert "ZeroGPU" in refused.value.hint and "Hugging Face Jobs" in refused.value.hint


@pytest.fixture
def nothing_loads(monkeypatch):
    """Any attempt to load model weights fails the test: the refusal must come first."""
    import transformers

    def load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", load)
    monkeypatch.setenv(memory.LIMIT_ENV, str(256 << 20))


def _adapter(tiny_model, folder):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    get_peft_model(model, LoraConfig(r=4, target_modules="all-linear")).save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model)
    return folder


def test_merge_evaluation_and_cpu_training_refuse_before_loading_a_model_that_does_not_fit(tiny_model, tmp_path,
                                                                                          request):
    from phi3space import config
    from phi3space.engine import training
    from phi3space.engine.evaluate import evaluate
    from phi3space.engine.merge import merge_adapter
    from phi3space.run import RunDir

    adapter = _adapter(tiny_model, tmp_path / "adapter")
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    request.getfixturevalue("nothing_loads")
    with pytest.raises(OutOfMemory, match="merge needs about"):
        merge_adapter(str(adapter), tmp_path / "merged")
    with pytest.raises(OutOfMemory, match="evaluation needs about"):
        evaluate(str(adapter), RunDir(tmp_path / "eval").writer(), data=str(data), rows=1, update_card=False)
    cfg = config.from_dict(memorise_config(tiny_model, str(data), tmp_path / "run"))
    with pytest.raises(OutOfMemory, match="training needs about"):
        training.train(cfg)
    # Refused before its trainer existed: nothing left behind (issue 29's rule for every early refusal)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
