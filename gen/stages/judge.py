"""``judge``: LLM-as-judge (AlpaGasus, UltraFeedback). A model rates each record's response with
a rubric, and the scores and the rationale become the record's ``scores`` and ``rationale``
columns; the ``score`` filter then keeps what is rated high enough.

The rubric is a prompt file (``judge_<rubric>.j2`` in ``gen/prompts``, replaceable under the
spec's ``prompts:``) and the scores it asks for. The judge answers with one JSON object, the
scores first and then the rationale; by default a JSON-schema structured output (vLLM's
``structured_outputs.json``) makes every token keep that object valid, so only an answer cut at
``max_tokens`` can fail to parse. An answer that does not parse, or lacks a score in range, is a
reject (``unparsed_judgement``) with the model's output as evidence: never a record kept unrated.

The judged record is the same record (its id, messages and generation lineage unchanged) with
the scores added: the judge's model, rubric and prompt hash go in its ``metadata``. The judge's
tokens are counted apart (the manifest's ``judge_tokens``): they are the cost of scoring, not of
making data.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from gen.records import Record, drop, instruction_of, response_of
from gen.sampling import Sampling, StructuredOutputs
from gen.stages.base import Stage, StageConfig, StageContext
from gen.stages.common import failure, layered_sampling


@dataclass(frozen=True)
class Rubric:
    prompt: str  # a prompt of gen/prompts
    aspects: tuple[str, ...]  # the scores it asks for, each an integer in [low, high]
    low: int
    high: int


RUBRICS = {
    # AlpaGasus: accuracy on a scale of 0 to 5 (the paper kept ratings >= 4.5).
    "alpagasus": Rubric("judge_alpagasus", ("accuracy",), 0, 5),
    # UltraFeedback: four aspects, each 1 to 5.
    "ultrafeedback": Rubric("judge_ultrafeedback", ("instruction_following", "truthfulness", "honesty",
                                                    "helpfulness"), 1, 5),
}

# A judgement is not sampled: the same record gets the same rating on every run (AlpaGasus and
# UltraFeedback used their judges' API defaults; greedy is the reproducible choice). It must end,
# whatever the generation's settings: the schema's object closes, then the end of sequence.
JUDGE_SAMPLING = Sampling(temperature=0.0, max_tokens=384, ignore_eos=False)

_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


class JudgeConfig(StageConfig):
    type: Literal["judge"] = "judge"
    rubric: Literal["alpagasus", "ultrafeedback"] = "alpagasus"
    """The rating: ``alpagasus`` (``accuracy`` 0-5) or ``ultrafeedback`` (``instruction_following``,
    ``truthfulness``, ``honesty``, ``helpfulness``, each 1-5)."""
    structured: bool = True
    """Constrain the answer to the rubric's JSON object (a JSON schema); off: free text, from which
    the first JSON object is parsed."""
    rationale_max_chars: int = Field(600, ge=1)
    """The schema's bound on the rationale: a judge rambling on is cut by the schema, its object
    closed, instead of by ``max_tokens`` (a reject)."""


def judgement_schema(rubric: Rubric, rationale_max_chars: int) -> dict[str, Any]:
    """The JSON schema of the judge's answer: every score an integer in range, then the rationale."""
    scores = {aspect: {"type": "integer", "minimum": rubric.low, "maximum": rubric.high} for aspect in rubric.aspects}
    return {"type": "object",
            "properties": {**scores, "rationale": {"type": "string", "maxLength": rationale_max_chars}},
            "required": [*rubric.aspects, "rationale"], "additionalProperties": False}


def parse_judgement(text: str, rubric: Rubric) -> tuple[dict[str, int | float], str]:
    """(scores, rationale) from the judge's answer; ``ValueError`` says what is wrong with it."""
    found = _OBJECT.search(text)
    if found is None:
        raise ValueError("no JSON object")
    try:
        # xgrammar's JSON strings admit raw control characters (a tab, \x11), which strict JSON
        # does not: the structure is what the schema guarantees, so they are read as they are.
        answer = json.loads(found.group(0), strict=False)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(answer, dict):
        raise ValueError("not a JSON object")
    scores = {}
    for aspect in rubric.aspects:
        value = answer.get(aspect)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"no number for {aspect!r}")
        if not rubric.low <= value <= rubric.high:
            raise ValueError(f"{aspect} {value} is outside {rubric.low}-{rubric.high}")
        scores[aspect] = value
    rationale = answer.get("rationale", "")
    return scores, rationale if isinstance(rationale, str) else json.dumps(rationale)


class Judge(Stage):
    name = "judge"
    prompts = {
        "judge_alpagasus": {"instruction": "Name three primary colours.", "response": "Red, yellow and blue."},
        "judge_ultrafeedback": {"instruction": "Name three primary colours.", "response": "Red, yellow and blue."},
    }

    def __init__(self, config: JudgeConfig, ctx: StageContext):
        super().__init__(config, ctx)
        self.rubric = RUBRICS[config.rubric]
        method = JUDGE_SAMPLING
        if config.structured:
            method = JUDGE_SAMPLING.model_copy(
                update={"structured_outputs": StructuredOutputs(json=judgement_schema(self.rubric, config.rationale_max_chars))})
        self.sampling = {**layered_sampling(ctx, method, config.sampling), "n": 1}
        self.template = self.prompt(self.rubric.prompt)
        self.prompt_tokens = 0
        self.completion_tokens = 0

    @classmethod
    def scores_made(cls, config: JudgeConfig) -> tuple[str, ...]:
        return RUBRICS[config.rubric].aspects

    async def process(self, record: Record) -> list[Record]:
        response = response_of(record)
        if not response:
            return [drop(dict(record), self.name, "no_response")]
        request = [{"role": "user", "content": self.template.render(instruction=instruction_of(record),
                                                                    response=response)}]
        [judgement] = await self.ctx.engine.chat(request, self.sampling, key=f"{record['id']}/{self.name}")
        self.prompt_tokens += judgement.prompt_tokens
        self.completion_tokens += judgement.completion_tokens
        judged = {**record, "metadata": {**(record.get("metadata") or {}), "judge": {
            "model": self.ctx.model, "rubric": self.config.rubric, "template": self.template.name,
            "template_hash": self.template.sha256, "prompt_tokens": judgement.prompt_tokens,
            "completion_tokens": judgement.completion_tokens}}}
        if reason := failure(judgement):
            return [drop(judged, self.name, reason, detail=judgement.error)]
        try:
            judged["scores"], judged["rationale"] = parse_judgement(judgement.text, self.rubric)
        except ValueError as exc:
            return [drop(judged, self.name, "unparsed_judgement", problem=str(exc),
                         finish_reason=judgement.finish_reason, output=judgement.text[:1000])]
        return [judged]
