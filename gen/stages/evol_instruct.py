"""``evol_instruct``: WizardLM's Evol-Instruct (Xu et al. 2023).

Each round rewrites the record's instruction with one operation drawn at random: an in-depth one
(add a constraint, deepen, concretize, increase reasoning steps, complicate the input) that makes
it harder by 10 to 20 words, or in-breadth evolution that writes a new, rarer instruction of the
same domain. The model then answers the evolved instruction and the paper's elimination rules
judge the pair. A surviving evolution is a record (``evol_round``, ``evol_op``; ``round`` = the
evolution round) and the starting point of the next round; an eliminated one goes to
``rejected/`` with the rule that removed it, and the next round starts again from the last
surviving instruction, as the paper puts failed evolutions back into the pool.

The operation of each round is drawn from a generator seeded by the record id and the round, so a
rerun or a resumed run evolves every record the same way.
"""

from __future__ import annotations

import random
import re
from typing import Literal

from pydantic import Field

from gen.records import Record, drop, instruction_of, is_dropped
from gen.sampling import Sampling, StructuredOutputs
from gen.stages.base import Stage, StageConfig, StageContext
from gen.stages.common import failure, layered_sampling

EvolOp = Literal["add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input", "breadth"]
IN_DEPTH_OPS: tuple[EvolOp, ...] = ("add_constraints", "deepen", "concretize", "increase_reasoning",
                                   "complicate_input")


class EvolInstructConfig(StageConfig):
    type: Literal["evol_instruct"] = "evol_instruct"
    rounds: int = Field(4, ge=1)
    """Evolution rounds M (WizardLM evolved Alpaca's data for 4 epochs)."""
    ops: list[EvolOp] = Field(default_factory=lambda: [*IN_DEPTH_OPS, "breadth"], min_length=1)
    """Operations drawn from with equal probability each round (the paper: five in-depth and one
    in-breadth)."""
    check_equality: bool = True
    """Ask the model whether the evolved instruction equals the original (elimination rule 1, as
    the paper does with ChatGPT); an answer that is neither "equal" nor "not equal" keeps it."""
    structured_equality: bool = False
    """Constrain the equality answer to "Equal" or "Not Equal" (a ``choice`` structured output), so
    that every judgement is one of the two instead of free text that keeps the evolution."""
    apology_max_words: int = Field(80, ge=1)
    """Rule 2: a response containing "sorry" and shorter than this many words is eliminated."""
    evolve_sampling: Sampling | None = None
    """Overrides for the rewriting request (``sampling`` covers the response)."""


# Rewriting is creative but must stay on topic; WizardLM used ChatGPT at its defaults (temperature 1).
EVOLVE_SAMPLING = Sampling(temperature=1.0, max_tokens=2048)
JUDGE_SAMPLING = Sampling(temperature=0.0, max_tokens=8)
EQUALITY_ANSWERS = ("Equal", "Not Equal")
RESPONSE_SAMPLING = Sampling()  # the spec's sampling decides how answers are written

# Rule 4 (the paper): the rewrite leaks the rewriting prompt's own scaffolding.
SCAFFOLDING = re.compile(r"#\s*the given prompt\s*#|#\s*rewritten prompt\s*#|#\s*created prompt\s*#|"
                         r"given prompt|rewritten prompt|created prompt", re.IGNORECASE)
# Rule 3: a response made only of punctuation and these (a small list of English function words).
STOP_WORDS = frozenset(
    "a an and are as at be but by for from has have he her his i if in is it its me my no not of on "
    "or our she so that the their them then there these they this to was we were what when which "
    "who will with you your yes ok okay".split()
)
_WORD = re.compile(r"[A-Za-z0-9']+")


def scaffolding_leak(evolved: str) -> str | None:
    match = SCAFFOLDING.search(evolved)
    return match.group(0) if match else None


def clean_evolution(generation: str) -> str:
    """The rewritten instruction: surrounding whitespace and quotes removed."""
    return generation.strip().strip('"').strip()


def is_apology(response: str, max_words: int) -> bool:
    return "sorry" in response.lower() and len(response.split()) < max_words


def only_punctuation_and_stop_words(response: str) -> bool:
    return all(word.lower() in STOP_WORDS for word in _WORD.findall(response))


def parse_equality(judgement: str) -> bool | None:
    """True for "Equal", False for "Not Equal", None when the answer is neither."""
    text = judgement.strip().lower()
    if text.startswith("not equal"):
        return False
    if text.startswith("equal"):
        return True
    return None


class EvolInstruct(Stage):
    name = "evol_instruct"
    prompts = {
        "evol_in_depth": {"instruction": "Name three primary colours.", "op": "add_constraints"},
        "evol_in_breadth": {"instruction": "Name three primary colours.", "op": "breadth"},
        "evol_equality": {"first": "Name three primary colours.", "second": "Name three colours."},
    }

    def __init__(self, config: EvolInstructConfig, ctx: StageContext):
        super().__init__(config, ctx)
        self.evolve_sampling = layered_sampling(ctx, EVOLVE_SAMPLING, config.evolve_sampling)
        judge = JUDGE_SAMPLING
        if config.structured_equality:
            judge = judge.model_copy(update={"structured_outputs": StructuredOutputs(choice=list(EQUALITY_ANSWERS))})
        self.judge_sampling = layered_sampling(ctx, judge, None)
        self.sampling = layered_sampling(ctx, RESPONSE_SAMPLING, config.sampling)
        self.in_depth = self.prompt("evol_in_depth")
        self.in_breadth = self.prompt("evol_in_breadth")
        self.equality = self.prompt("evol_equality")

    async def process(self, record: Record) -> list[Record]:
        out: list[Record] = []
        current = record
        for evol_round in range(1, self.config.rounds + 1):
            op = random.Random(f"{record['id']}/{evol_round}").choice(self.config.ops)
            evolved = await self.evolve_once(current, evol_round, op)
            out.append(evolved)
            if not is_dropped(evolved):
                current = evolved
        return out

    async def evolve_once(self, parent: Record, evol_round: int, op: EvolOp) -> Record:
        """One evolution of ``parent``'s instruction: a record, kept or marked dropped."""
        original = instruction_of(parent)
        template = self.in_breadth if op == "breadth" else self.in_depth
        [rewrite] = await self.ctx.engine.chat(
            [{"role": "user", "content": template.render(instruction=original, op=op)}],
            {**self.evolve_sampling, "n": 1}, key=f"{parent['id']}/evol{evol_round}/rewrite")
        evolved = clean_evolution(rewrite.text)

        def made(messages: list[dict[str, str]], completion=rewrite, **metadata) -> Record:
            return self.derive(parent, messages, index=evol_round, completion=completion, template=template,
                               round=evol_round, evol_round=evol_round, evol_op=op, evolved_from=original,
                               **metadata)

        question = [{"role": "user", "content": evolved}]
        if reason := failure(rewrite):
            return drop(made(question), self.name, reason, detail=rewrite.error)
        if rewrite.finish_reason == "length":
            return drop(made(question), self.name, "truncated_evolution")
        if not evolved:
            return drop(made(question), self.name, "empty_evolution")
        if leak := scaffolding_leak(evolved):
            return drop(made(question), self.name, "copies_prompt_scaffolding", phrase=leak)
        if evolved == original.strip():
            return drop(made(question), self.name, "no_information_gain", judged_by="identical_text")

        [response] = await self.ctx.engine.chat(question, {**self.sampling, "n": 1},
                                                 key=f"{parent['id']}/evol{evol_round}/answer")
        answered = [*question, {"role": "assistant", "content": response.text}]
        if reason := failure(response):
            return drop(made(answered, response), self.name, reason, detail=response.error)
        if is_apology(response.text, self.config.apology_max_words):
            return drop(made(answered, response), self.name, "response_is_apology")
        if only_punctuation_and_stop_words(response.text):
            return drop(made(answered, response), self.name, "response_only_stop_words")
        if self.config.check_equality and op != "breadth":  # a breadth rewrite is new by design
            [judgement] = await self.ctx.engine.chat(
                [{"role": "user", "content": self.equality.render(first=original, second=evolved)}],
                {**self.judge_sampling, "n": 1}, key=f"{parent['id']}/evol{evol_round}/judge")
            if parse_equality(judgement.text):
                return drop(made(answered, response), self.name, "no_information_gain",
                            judged_by="model", judgement=judgement.text.strip())
        return made(answered, response)
