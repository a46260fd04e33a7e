"""A run that runs out of memory tries once more with half the micro-batch and twice the accumulation (the same
effective batch), and says so. The GPU's limit is stood in for by the model raising torch's own OutOfMemoryError for
micro-batches above a size, as CUDA's allocator does on a full GPU (this machine has no GPU to fill)."""

import json

import pytest
import torch
from helpers import memorise_config, write_qa_jsonl

from phi3space import config
from phi3space.errors import OutOfMemory


@pytest.fixture
def gpu_fits(monkeypatch):
    """Make the model run out of memory on micro-batches of more than ``rows`` rows while training."""
    from transformers.models.phi3 import modeling_phi3

    forward = modeling_phi3.Phi3ForCausalLM.forward
    limit = {}

    def limited(self, *args, **kwargs):
        rows = (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[0]
        if self.training and rows > limit["rows"]:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB ({rows} rows)")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(modeling_phi3.Phi3ForCausalLM, "forward", limited)
    return lambda rows: limit.update(rows=rows)


def _said(run) -> list[str]:
    return [json.loads(line).get("message") or "" for line in run.events.read_text().splitlines()]


@pytest.mark.slow
def test_out_of_memory_tries_again_with_half_the_micro_batch_and_the_same_effective_batch(tiny_model, tmp_path,
                                                                                          gpu_fits):
    from phi3space.engine import training
    from phi3space.run import RunDir

    gpu_fits(rows=2)
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    cfg = config.from_dict(memorise_config(tiny_model, str(data), tmp_path / "run", training__batch_size=4,
                                           training__grad_accum=1))
    run = RunDir(training.train(cfg))
    state = run.state()
    assert state.status == "completed" and state.step == 40
    assert state.train_losses[-1][1] < state.train_losses[0][1] / 5, state.train_losses  # it learned
    assert ("out of memory with micro-batch 4 x accumulation 1: trying once more with micro-batch 2 x accumulation 2 "
            "(the same effective batch)") in _said(run)
    saved = config.load(run.config).training
    assert (saved.batch_size, saved.grad_accum) == (2, 2)  # what it trained with, for the card and --resume


@pytest.mark.slow
def test_a_run_that_runs_out_of_memory_again_fails_with_the_message_and_hint(tiny_model, tmp_path, gpu_fits):
    from phi3space.engine import training
    from phi3space.run import RunDir

    gpu_fits(rows=1)
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    cfg = config.from_dict(memorise_config(tiny_model, str(data), tmp_path / "run", training__batch_size=4))
    with pytest.raises(OutOfMemory) as err:
        training.train(cfg)
    assert err.value.message == "the GPU ran out of memory" and "Lower training.batch_size" in err.value.hint
    run = RunDir(tmp_path / "run")
    assert sum("trying once more" in m for m in _said(run)) == 1  # once, not again and again
    assert run.state().status == "failed" and run.state().error["kind"] == "oom"
