"""Training objectives as the run config knows them: a registry, like the job kinds and the backends.

An objective is what a run optimises; trl has one trainer for each (SFTTrainer, DPOTrainer, later ORPOTrainer,
KTOTrainer). This half holds what the layers at and above the config need: the name ``training.objective`` takes
and its help, the suffix of a default run name, the objective's own config checks, what one of its training rows is
called (on the page and in the CLI), and what it adds to a model card. What it does inside a job (its data, its
trainer, the memory it needs) is registered under the same name in ``phi3space.engine.objectives``;
``tests/test_objectives.py`` checks that both registries name the same objectives.

Adding an objective: an ``Objective`` here, and an engine module registered there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _no_problems(cfg: Any) -> list[str]:
    return []


@dataclass(frozen=True)
class Objective:
    """One training objective, as the config, the form, the CLI and the model card see it."""

    name: str  # what training.objective says
    help: str  # what it learns from what, for the setting's help text
    rows: str  # what one training row is called: "rows", "pairs"
    trained: str  # the card's sentence on how the adapter was trained ({dataset}, {start}: the starting adapter)
    run_suffix: str = ""  # added to the default run name
    card_setting: str | None = None  # the card's "objective" row ({t}: the training settings); None: none
    card_results: tuple[tuple[str, str], ...] = ()  # the card's result rows of its own: (label, metric key)
    check: Callable[[Any], list[str]] = _no_problems  # problems with a RunConfig that only this objective has

    def problems(self, cfg: Any) -> list[str]:
        """What is wrong with ``cfg`` (a RunConfig) for this objective, one message per problem."""
        return self.check(cfg)

    def card_settings(self, cfg: Any) -> list[tuple[str, str]]:
        """The hyperparameter rows this objective adds at the top of the card's table."""
        return [("objective", self.card_setting.format(t=cfg.training))] if self.card_setting else []

    def how_trained(self, dataset: str, start: str) -> str:
        """The card's sentence on how the adapter was trained (``start``: the words on a starting adapter, or '')."""
        return self.trained.format(dataset=dataset, start=start)


def _dpo_problems(cfg: Any) -> list[str]:
    if cfg.training.packing:
        return ["training.packing: packs SFT rows; DPO's pairs are not packed (set it to false)"]
    return []


SFT = Objective(
    "sft", help="learn the answers (conversations, prompt/completion)", rows="rows",
    trained="fine-tuned on `{dataset}`{start} with phi3space (trl's SFTTrainer, loss on assistant turns only).",
    card_results=(("eval perplexity", "perplexity"),))
DPO = Objective(
    "dpo", help="prefer the chosen answer over the rejected one (prompt/chosen/rejected pairs)", rows="pairs",
    trained="preference-tuned with DPO on the prompt/chosen/rejected pairs of `{dataset}`{start} with phi3space "
            "(trl's DPOTrainer; the reference is the model without this training's changes).",
    run_suffix="-dpo", card_setting="DPO (beta {t.beta:g}, loss {t.loss_type})",
    card_results=(("eval reward accuracy", "eval_reward_accuracy"), ("eval reward margin", "eval_reward_margin"),
                  ("final train reward accuracy", "final_reward_accuracy"),
                  ("final train reward margin", "final_reward_margin")),
    check=_dpo_problems)
OBJECTIVES = {o.name: o for o in (SFT, DPO)}


def objective_of(cfg: Any) -> Objective:
    """The objective a RunConfig trains with (``training.objective``, checked against the registry on loading)."""
    return OBJECTIVES[cfg.training.objective]


def objectives_help() -> str:
    """The help text of ``training.objective``: each objective and what it learns from."""
    return "; ".join(f"{o.name}: {o.help}" for o in OBJECTIVES.values()) + "."
