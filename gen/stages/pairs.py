"""``pairs``: preference pairs for DPO from judged answers, as UltraFeedback's data was binarised
for Zephyr (Tunstall et al. 2023): of the answers to one instruction, the best rated is ``chosen``
and a worse one ``rejected``.

``respond`` with ``n > 1`` makes several answers to each instruction, a ``judge`` stage scores
each, and this stage sees all of a work item's answers at once (a group stage). Answers to the
same conversation are compared by the mean of their scores: the pair's record has the chosen
answer as its ``messages`` and the two whole conversations as its ``chosen`` and ``rejected``
columns, the conversational format with an implicit prompt that TRL's ``DPOTrainer`` reads as it
is (``datasets.load_dataset(DIR)["data"]``). The answers a pair was made from go to ``rejected/``
as ``paired`` (evidence: the pair's id and each one's part), so kept + rejected is still every
record made; answers to an instruction with no pair (one answer, or none better than another by
``min_margin``) are ``no_preference``.
"""

from __future__ import annotations

import json
import random
from typing import Literal

from pydantic import Field

from gen.records import Record, drop
from gen.stages.base import GroupStage, StageConfig


class PairsConfig(StageConfig):
    type: Literal["pairs"] = "pairs"
    rejected: Literal["lowest", "random"] = "lowest"
    """Which worse answer is ``rejected``: the lowest rated, or one drawn from those below the chosen
    (Zephyr's UltraFeedback binarisation; the draw is seeded by the record, so reruns agree)."""
    min_margin: float = Field(1.0, gt=0)
    """The chosen answer's mean score exceeds the rejected one's by at least this (1: a point on the
    rubric's scale), so that a pair is a preference, not noise between ties."""


def mean_score(record: Record) -> float:
    scores = record["scores"]
    return sum(scores.values()) / len(scores)


class Pairs(GroupStage):
    name = "pairs"
    uses_llm = False

    async def process_group(self, records: list[Record]) -> list[Record]:
        by_prompt: dict[str, list[Record]] = {}
        for record in records:
            by_prompt.setdefault(json.dumps(record["messages"][:-1]), []).append(record)
        return [out for answers in by_prompt.values() for out in self.pair(answers)]

    def pair(self, answers: list[Record]) -> list[Record]:
        """One pair from the answers to one conversation, with the answers marked; or the answers
        marked ``no_preference``."""
        ranked = sorted(answers, key=lambda r: (-mean_score(r), r["id"]))  # ties: by id, stable on reruns
        chosen = ranked[0]
        worse = [r for r in ranked[1:] if mean_score(chosen) - mean_score(r) >= self.config.min_margin]
        if not worse:
            return [drop(dict(r), self.name, "no_preference", answers=len(answers), scores=r.get("scores"))
                    for r in answers]
        rejected = worse[-1] if self.config.rejected == "lowest" else random.Random(chosen["id"]).choice(worse)
        pair = self.derive(chosen, chosen["messages"], pair={
            "chosen_id": chosen["id"], "rejected_id": rejected["id"], "answers": len(answers),
            "chosen_scores": chosen["scores"], "rejected_scores": rejected["scores"]})
        pair.update(chosen=chosen["messages"], rejected=rejected["messages"], scores=chosen["scores"],
                    rationale=chosen.get("rationale"))
        parts = {chosen["id"]: "chosen", rejected["id"]: "rejected"}
        return [pair, *(drop(dict(r), self.name, "paired", pair=pair["id"], part=parts.get(r["id"], "unused"))
                        for r in answers)]
