"""Training objectives inside a job: a registry, by the name ``training.objective`` gives them.

Each objective owns its data preparation (for training, and the sample Inspect shows), its trl trainer, how it
renders an example row, and its share of the memory and time estimates. What the config, the form, the CLI and the
model card need of it (help, run-name suffix, checks, card rows) is registered under the same name in
``phi3space.config.objectives``. Like trl (one trainer per objective), adding one (ORPO, KTO) is one module with its
trainer and an entry in each registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from phi3space.config import RunConfig
from phi3space.engine import data, dpo, pairs, sft, tokens
from phi3space.engine.data import Prepared

# (data.*, base model, training.max_length, training.seed, token) -> the rows, split, measured, with the tokenizer
Prepare = Callable[..., Prepared]


@dataclass(frozen=True)
class Objective:
    """What one objective does inside a job."""

    name: str  # as in phi3space.config.objectives
    prepare: Prepare  # every row, ready for its trainer
    inspect: Prepare  # the first rows, measured: what Inspect shows
    trainer: Callable[..., Any]  # (cfg, model, prepared, hardware, callbacks) -> the trl trainer
    example_title: str  # the CLI's heading over an example row
    example_text: Callable[[dict, Any], str]  # (row, tokenizer) -> the row as the CLI prints it
    example_segments: Callable[[dict, Any], list[tuple[str, str | None]]]  # the form's: (text, label or None)
    sequences_per_row: int = 1  # sequences a row puts through the model at each step (memory, time)
    work_per_token: float = 1.0  # a step's work per token, against a plain forward and backward pass

    def rows_to_train(self, cfg: RunConfig, token: str | None) -> Prepared:
        """Every row of ``cfg``'s data, ready for this objective's trainer."""
        return self.prepare(cfg.data, cfg.model.base, cfg.training.max_length, cfg.training.seed, token)

    def rows_to_show(self, cfg: RunConfig, token: str | None) -> Prepared:
        """The first rows of ``cfg``'s data, counted and measured, as Inspect shows them."""
        return self.inspect(cfg.data, cfg.model.base, cfg.training.max_length, cfg.training.seed, token)


SFT = Objective("sft", prepare=data.prepare_for_training, inspect=data.prepare_with_tokenizer,
                trainer=sft.sft_trainer, example_title="example (trained tokens between [[ and ]])",
                example_text=tokens.render_marked, example_segments=sft.render_example)
# A pair is two sequences (its prompt with each answer); the reference's forward pass (no backward) adds about a
# third of a training step's work.
DPO = Objective("dpo", prepare=partial(pairs.prepare_pairs, sample=None), inspect=pairs.prepare_pairs,
                trainer=dpo.dpo_trainer, example_title="example pair", example_text=pairs.render_pair_text,
                example_segments=pairs.render_pair, sequences_per_row=2, work_per_token=4 / 3)
OBJECTIVES = {o.name: o for o in (SFT, DPO)}


def objective_of(cfg: RunConfig) -> Objective:
    """The objective ``cfg`` trains with (``training.objective``)."""
    return OBJECTIVES[cfg.training.objective]
