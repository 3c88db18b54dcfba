"""``self_instruct``: Self-Instruct's bootstrap (Wang et al. 2023, yizhongw/self-instruct).

A pool starts from the seed tasks. Each request shows the model 8 numbered instructions (6 seeds,
2 machine-made once there are any) and lets it continue the list; the continuation is split into
instructions, Self-Instruct's instruction rules are applied (the ``instruction_rules`` filter's
code, so there is one implementation), and a candidate joins the pool only if its ROUGE-L F1 with
every pool instruction is at most 0.7 (:mod:`gen.novelty`). Optionally each new task then gets
instances as in the paper: the model first says whether it is a classification task, then writes
examples input-first, or output-first (label, then input) for classification tasks.

There is no round barrier: up to the engine's capacity of list requests stay in flight and each
completion is judged against the pool the moment it arrives. ``round`` (and ``bootstrap_round``)
of a machine instruction is one more than the newest machine instruction its prompt showed (seeds
are round 0), the generation the paper's iterations count.

Resume: every yielded record carries ``machine_instruction`` (accepted ones only),
``bootstrap_round`` and ``bootstrap_request`` in its metadata, and those survive later stages. A
resumed run reloads the committed machine instructions into the pool, counts them toward
``target`` and numbers its requests after the last committed one: a half-built pool is neither
rebuilt nor duplicated. Requests that were in flight at the crash were never committed and are
simply made again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from filters.quality import InstructionRules, InstructionRulesConfig
from gen.novelty import DEFAULT_THRESHOLD, NoveltyIndex
from gen.records import Record, content_id, drop
from gen.sampling import Sampling, StructuredOutputs
from gen.stages.base import SourceStage, StageConfig, StageContext, WorkItem
from gen.stages.common import failure, layered_sampling

if TYPE_CHECKING:
    from cluster.engine import Completion
    from gen.sink import CommittedWork

log = logging.getLogger(__name__)


class SelfInstructConfig(StageConfig):
    type: Literal["self_instruct"] = "self_instruct"
    target: int = Field(52_000, ge=1)
    """Machine-made instructions to reach (the paper built ~52k)."""
    prompt_instructions: int = Field(8, ge=2)
    """Instructions shown per request (paper: 8)."""
    machine_instructions_per_prompt: int = Field(2, ge=0)
    """Of those, how many are machine-made once the pool has them (paper: 2; the rest are seeds)."""
    rouge_threshold: float = Field(DEFAULT_THRESHOLD, gt=0, lt=1)
    """Keep a candidate only if its ROUGE-L F1 with every pool instruction is at most this (paper: 0.7).
    Below 1: every F1 is at most 1, so at 1 nothing would ever be too similar."""
    classification: bool = False
    """The paper's classification variant: show classification seeds only, under the
    "Come up with a series of classification tasks" header."""
    instances: bool = True
    """Write input/output instances for each new task, as the paper does. Off: records hold only the
    instruction, for a following ``respond`` or ``evol_instruct`` stage."""
    max_instances: int = Field(5, ge=1)
    """Instances kept per task (paper, prepare_for_finetuning.py: at most 5)."""
    max_requests: int | None = Field(None, ge=1)
    """Stop after this many list requests even if ``target`` is not reached (None: 2 x target).
    Each request can add up to 7 instructions; the cap only stops a model whose lists keep failing."""
    seed: int = 0
    """Seeds which pool instructions each request shows, so reruns show the same ones."""
    instruction_rules: InstructionRulesConfig = InstructionRulesConfig()
    """Self-Instruct's instruction rules (Alpaca's blacklist words can be added here); every
    candidate is machine-written, so ``applies_to`` does not matter here."""
    instance_sampling: Sampling | None = None
    """Overrides for the classification question and instance requests (``sampling`` covers the list)."""
    structured_list: bool = False
    """Constrain the continued list to its numbered shape (a ``regex`` structured output: the rest of
    the open item, then ``N. text`` lines), so that it always splits into items as the paper splits it."""

    @model_validator(mode="after")
    def _seeds_in_every_prompt(self) -> SelfInstructConfig:
        if self.machine_instructions_per_prompt >= self.prompt_instructions:
            raise ValueError(f"machine_instructions_per_prompt ({self.machine_instructions_per_prompt}) must be "
                             f"below prompt_instructions ({self.prompt_instructions}): at least one seed task "
                             "is shown in each request")
        return self


# The paper's decoding (bootstrap_instructions.py): a fairly focused list, pushed away from
# repeating the examples, stopped at a blank line or before item 16.
LIST_SAMPLING = Sampling(temperature=0.7, top_p=0.5, presence_penalty=2.0, max_tokens=1024,
                         stop=["\n\n", "\n16", "16.", "16 ."])
# generate_instances.py / identify_clf_or_not.py: greedy, with a presence penalty for instances.
INSTANCE_SAMPLING = Sampling(temperature=0.0, presence_penalty=1.5, max_tokens=350,
                             stop=["Task:"])
CLASSIFICATION_QUESTION_SAMPLING = Sampling(temperature=0.0, max_tokens=3, stop=["\n", "Task"])

FEW_SHOT_TASKS = 4  # seed tasks shown as worked examples in the instance and classification prompts
_LIST_ITEM = re.compile(r"\n\d+\s?\. ")  # the paper's split of the continued list
# The continuation of "... 9." as the split above reads it: the open item's text, then numbered items.
LIST_REGEX = r" [^\n]+(\n[0-9]+\. [^\n]+)*"
_EXAMPLE_HEADER = re.compile(r"^\s*Example\s*\d+\s*:?\s*$", re.MULTILINE)
_CLASS_LABEL = re.compile(r"^\s*Class label\s*:", re.MULTILINE)
# A small model mixes the two formats and ends a labelled input with an "Output:" line of its own.
_OUTPUT_LINE = re.compile(r"^\s*Output\s*:", re.MULTILINE)


def parse_instruction_list(continuation: str) -> list[str]:
    """The instructions of a continued numbered list (the text after the prompt's "9.")."""
    instructions = []
    for raw in _LIST_ITEM.split(continuation):
        text = re.sub(r"\s+", " ", raw).strip()
        if text:
            instructions.append(text)
    return instructions


def parse_input_first(generation: str) -> list[tuple[str, str]]:
    """(input, output) pairs from "Example N / Input: ... / Output: ..." blocks; an example with
    no "Output:" is skipped, one with no "Input:" has an empty input."""
    blocks = _EXAMPLE_HEADER.split(generation) if _EXAMPLE_HEADER.search(generation) else [generation]
    pairs = []
    for block in blocks:
        before, has_output, output = block.partition("Output:")
        if not has_output:
            continue
        _, _, task_input = before.partition("Input:")
        pairs.append((task_input.strip(), output.strip()))
    return pairs


def parse_output_first(generation: str) -> list[tuple[str, str]]:
    """(input, output) pairs from "Class label: ... / Input: ..." blocks (the label is the output);
    an "Output:" line after the input is not part of it."""
    pairs = []
    for block in _CLASS_LABEL.split(generation)[1:]:
        label, _, task_input = block.partition("Input:")
        task_input = _OUTPUT_LINE.split(task_input, maxsplit=1)[0]
        if label.strip():
            pairs.append((task_input.strip(), label.strip()))
    return pairs


def clean_instances(pairs: list[tuple[str, str]], limit: int) -> tuple[list[tuple[str, str]], str | None]:
    """Self-Instruct's instance rules (prepare_for_finetuning.py): the kept pairs, or the reason
    none are: an instance whose input equals its output, whose output is empty, or whose input or
    output ends with ":" is dropped; a task giving one input different outputs loses them all;
    duplicates go; at most ``limit`` remain."""
    kept: list[tuple[str, str]] = []
    for task_input, output in pairs:
        if not output or task_input == output or task_input.endswith(":") or output.endswith(":"):
            continue
        if (task_input, output) not in kept:
            kept.append((task_input, output))
    outputs_by_input: dict[str, set[str]] = {}
    for task_input, output in kept:
        outputs_by_input.setdefault(task_input, set()).add(output)
    if any(len(outputs) > 1 for outputs in outputs_by_input.values()):
        return [], "conflicting_instances"
    if not kept:
        return [], "no_valid_instances" if pairs else "unparsed_instances"
    return kept[:limit], None


@dataclass
class BootstrapPool:
    """The instruction pool: seeds and accepted machine instructions, and their rounds."""

    index: NoveltyIndex
    seed_tasks: list[dict]  # {"instruction", "input", "output", "is_classification"}
    machine: list[str] = field(default_factory=list)
    rounds: dict[str, int] = field(default_factory=dict)
    next_request: int = 0


@dataclass(frozen=True)
class ListReply:
    request: int
    shown_machine: list[str]
    completion: Completion


_SAMPLE_TASK = {"instruction": "Is this review positive or negative?", "input": "A fine film.",
                "output": "Positive", "is_classification": True}
_SAMPLE_INSTANCE_PROMPT = {"examples": [_SAMPLE_TASK], "task": "Sort the numbers in ascending order."}


class SelfInstruct(SourceStage):
    name = "self_instruct"
    prompts = {
        "self_instruct": {"instructions": ["Name three primary colours.", "Sort the numbers: 3, 1, 2."],
                          "classification": False},
        "self_instruct_is_classification": _SAMPLE_INSTANCE_PROMPT,
        "self_instruct_input_first": _SAMPLE_INSTANCE_PROMPT,
        "self_instruct_output_first": _SAMPLE_INSTANCE_PROMPT,
    }

    def __init__(self, config: SelfInstructConfig, ctx: StageContext):
        super().__init__(config, ctx)
        listing = LIST_SAMPLING
        if config.structured_list:
            listing = listing.model_copy(update={"structured_outputs": StructuredOutputs(regex=LIST_REGEX)})
        self.sampling = layered_sampling(ctx, listing, config.sampling)
        self.instance_sampling = layered_sampling(ctx, INSTANCE_SAMPLING, config.instance_sampling)
        self.question_sampling = layered_sampling(ctx, CLASSIFICATION_QUESTION_SAMPLING, config.instance_sampling)
        self.rules = InstructionRules(config.instruction_rules)
        self.list_template = self.prompt("self_instruct")
        self.question_template = self.prompt("self_instruct_is_classification")
        self.input_first_template = self.prompt("self_instruct_input_first")
        self.output_first_template = self.prompt("self_instruct_output_first")
        self.max_requests = config.max_requests or 2 * config.target

    # ------------------------------------------------------------------ the bootstrap loop

    async def generate(self, seeds: list[Record], done: CommittedWork) -> AsyncIterator[WorkItem]:
        pool = self.restore_pool(seeds, done)
        lists: set[asyncio.Task] = set()
        instance_jobs: set[asyncio.Task] = set()
        try:
            while True:
                missing = self.config.target - len(pool.machine)
                # As many list requests in flight as the engines take, but never more than
                # instructions still missing: each request almost always brings at least one.
                while (len(lists) < min(missing, self.ctx.engine.capacity)
                       and pool.next_request < self.max_requests):
                    lists.add(asyncio.create_task(self.request_list(pool, pool.next_request)))
                    pool.next_request += 1
                if not lists and not instance_jobs:
                    break
                finished, _ = await asyncio.wait(lists | instance_jobs, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    if task in instance_jobs:
                        instance_jobs.discard(task)
                        yield task.result()  # a task and all its instances: one work item
                        continue
                    lists.discard(task)
                    for record in self.judge_list(pool, task.result()):
                        if self.config.instances and "machine_instruction" in record["metadata"]:
                            instance_jobs.add(asyncio.create_task(self.make_instances(pool, record)))
                        else:
                            yield [record]
                if len(pool.machine) >= self.config.target:
                    for task in lists:  # the pool is full: what is still in flight is surplus
                        task.cancel()
                    lists.clear()
        finally:
            for task in lists | instance_jobs:
                task.cancel()
        if len(pool.machine) < self.config.target:
            log.warning("self_instruct: stopped after %d list requests with %d of %d instructions "
                        "(max_requests)", pool.next_request, len(pool.machine), self.config.target)

    def restore_pool(self, seeds: list[Record], done: CommittedWork) -> BootstrapPool:
        """The seed pool, plus the machine instructions an interrupted run already committed."""
        pool = BootstrapPool(NoveltyIndex(self.config.rouge_threshold), seed_tasks=[])
        seen: set[str] = set()
        for seed in seeds:
            metadata = seed.get("metadata") or {}
            instruction = (metadata.get("seed_instruction") or "").strip()
            if not instruction or instruction in seen:
                continue  # one pool entry per task, however many instances it has
            seen.add(instruction)
            pool.index.add(instruction)
            pool.seed_tasks.append({
                "instruction": instruction,
                "input": (metadata.get("seed_input") or "").strip(),
                "output": (metadata.get("seed_output") or "").strip(),
                "is_classification": bool(metadata.get("is_classification")),
            })
        if not pool.seed_tasks:
            raise ValueError("self_instruct needs seed tasks with an instruction (Self-Instruct or "
                             "Alpaca seed format)")
        if self.config.classification and not self.prompt_seeds(pool):
            raise ValueError("self_instruct classification: no seed task has is_classification: true")
        for record in done.records(columns=["metadata"]):
            metadata = record.get("metadata") or {}
            if "bootstrap_request" in metadata:
                pool.next_request = max(pool.next_request, metadata["bootstrap_request"] + 1)
            instruction = metadata.get("machine_instruction")
            if instruction and instruction not in pool.rounds:
                pool.index.add(instruction)
                pool.machine.append(instruction)
                pool.rounds[instruction] = metadata.get("bootstrap_round", 1)
        return pool

    def prompt_seeds(self, pool: BootstrapPool) -> list[dict]:
        if self.config.classification:
            return [task for task in pool.seed_tasks if task["is_classification"]]
        return pool.seed_tasks

    async def request_list(self, pool: BootstrapPool, request: int) -> ListReply:
        rng = random.Random(f"{self.config.seed}/{request}")
        machine = rng.sample(pool.machine, min(self.config.machine_instructions_per_prompt, len(pool.machine)))
        candidates = self.prompt_seeds(pool)
        shown_seeds = rng.sample(candidates, min(self.config.prompt_instructions - len(machine), len(candidates)))
        shown = [task["instruction"] for task in shown_seeds] + machine
        rng.shuffle(shown)
        prompt = self.list_template.render(
            instructions=[re.sub(r"\s+", " ", text).strip().rstrip(":") for text in shown],
            classification=self.config.classification,
        )
        [completion] = await self.ctx.engine.complete(prompt, {**self.sampling, "n": 1},
                                                       key=f"{self.name}/list/{request}")
        return ListReply(request, machine, completion)

    def judge_list(self, pool: BootstrapPool, reply: ListReply) -> list[Record]:
        """Candidates of one reply, each accepted into the pool or marked dropped with a reason."""
        round_ = 1 + max((pool.rounds[text] for text in reply.shown_machine), default=0)
        request = {"id": content_id(self.name, "request", reply.request), "work_key": "",
                   "seed_id": None, "method": None, "metadata": {}}
        completion = reply.completion
        common = {"bootstrap_request": reply.request, "bootstrap_round": round_}

        def candidate_record(index: int, text: str, **metadata) -> Record:
            record = self.derive(request, [{"role": "user", "content": text}], index=index,
                                 completion=completion, template=self.list_template, round=round_,
                                 **common, **metadata)
            record["work_key"] = f"{self.name}/{record['id']}"
            return record

        if reason := failure(completion):
            return [drop(candidate_record(0, ""), self.name, reason, detail=completion.error)]
        if completion.finish_reason == "length":
            # The paper drops the whole list when it was cut off: its last item is incomplete
            # and the model was rambling.
            return [drop(candidate_record(0, completion.text), self.name, "truncated_response")]
        candidates = parse_instruction_list(completion.text)
        if not candidates:
            return [drop(candidate_record(0, completion.text), self.name, "no_instructions")]
        out = []
        for index, text in enumerate(candidates):
            if (verdict := self.rules.judge_instruction(text)) is not None:
                out.append(drop(candidate_record(index, text), self.name, verdict.reason, **verdict.evidence))
                continue
            if len(pool.machine) >= self.config.target:
                out.append(drop(candidate_record(index, text), self.name, "target_reached"))
                continue
            nearest = pool.index.nearest(text)
            similarity = {"most_similar_instruction": nearest.text, "rouge_l": round(nearest.rouge_l, 4)}
            if not pool.index.is_novel(nearest):
                out.append(drop(candidate_record(index, text), self.name, "too_similar", **similarity))
                continue
            pool.index.add(text)
            pool.machine.append(text)
            pool.rounds[text] = round_
            out.append(candidate_record(index, text, machine_instruction=text, **similarity))
        return out

    # ------------------------------------------------------------------ instances

    async def make_instances(self, pool: BootstrapPool, record: Record) -> list[Record]:
        """The task's instance records (or one dropped record saying why there are none)."""
        instruction = record["metadata"]["machine_instruction"]
        rng = random.Random(f"{self.config.seed}/instances/{record['id']}")
        if self.config.classification:
            is_classification = True
        else:
            is_classification = await self.ask_is_classification(pool, instruction, rng)
        record["metadata"]["is_classification"] = is_classification
        template = self.output_first_template if is_classification else self.input_first_template
        examples = [task for task in pool.seed_tasks if task["is_classification"] == is_classification]
        prompt = template.render(examples=rng.sample(examples, min(FEW_SHOT_TASKS, len(examples))),
                                 task=instruction)
        [completion] = await self.ctx.engine.complete(prompt, {**self.instance_sampling, "n": 1},
                                                       key=f"{record['id']}/instances")

        def instance_record(index: int, messages: list[dict[str, str]], **metadata) -> Record:
            # The instance is this stage's own product, not a second stage in the chain.
            made = self.derive({**record, "method": None}, messages, index=index, completion=completion, template=template,
                               sampling=self.instance_sampling, **metadata)
            made["work_key"] = record["work_key"]  # the task's: its instances commit with it
            return made

        question = [{"role": "user", "content": instruction}]
        if reason := failure(completion):
            return [drop(instance_record(0, question), self.name, reason, detail=completion.error)]
        parse = parse_output_first if is_classification else parse_input_first
        pairs = parse(completion.text)
        if completion.finish_reason == "length":
            pairs = pairs[:-1]  # the paper: the last instance of a cut-off generation is incomplete
        instances, problem = clean_instances(pairs, self.config.max_instances)
        if problem:
            return [drop(instance_record(0, question, raw_instances=completion.text), self.name, problem)]
        return [
            instance_record(index, [
                {"role": "user", "content": f"{instruction}\n\n{task_input}" if task_input else instruction},
                {"role": "assistant", "content": output},
            ], instance_input=task_input)
            for index, (task_input, output) in enumerate(instances)
        ]

    async def ask_is_classification(self, pool: BootstrapPool, instruction: str, rng: random.Random) -> bool:
        """The paper asks the model; an answer other than "yes" counts as no, as in
        identify_clf_or_not.py / generate_instances.py."""
        examples = []
        for wanted in (True, False):  # as many classification tasks as others, so "yes" is not a prior
            group = [task for task in pool.seed_tasks if task["is_classification"] == wanted]
            examples += rng.sample(group, min(FEW_SHOT_TASKS, len(group)))
        rng.shuffle(examples)
        prompt = self.question_template.render(examples=examples, task=instruction)
        [completion] = await self.ctx.engine.complete(prompt, {**self.question_sampling, "n": 1},
                                                       key=f"{self.name}/is_classification/{instruction}")
        return completion.text.strip().lower().startswith("yes")
