"""What the report shows, measured from an output directory alone (shards, journal, manifest,
timeline), so ``sdg report`` works on any finished, stopped or copied output.

Counts (funnel, finish reasons, languages, commits) use every record. Text measures (lengths in
tokens, diversity, examples) use a sample of at most ``TEXT_SAMPLE`` records of each kind, read
from shards spread over the output, so the report of a large run costs about what a small one's
does; the page says when a figure is a sample's.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from filters.quality import has_machine_instruction, instruction_without_input
from gen.diversity import distinct_n, nearest_rouge_l, nearest_rouge_l_among, verb_object_counts
from gen.embedded_models import EMBEDDED_MODELS, cache_root
from gen.records import Record, instruction_of, response_of
from gen.storage import Location
from gen.telemetry import read_timeline

TEXT_SAMPLE = 2000  # records of each kind whose text is measured
RATE_WINDOW_S = 10.0  # tokens are counted when a request finishes: a rate over 1 s would be all bursts
EXAMPLES_PER_REASON = 3
KEPT_EXAMPLES = 5
TOP_VERB_OBJECTS = 20
COUNTED_COLUMNS = ["stage", "finish_reason", "lang", "lang_score", "completion_tokens"]
TEXT_COLUMNS = ["id", "messages", "method", "metadata"]
REJECTED_COLUMNS = ["drop_filter", "drop_reason", "drop_evidence"]


@dataclass
class Measures:
    root: Location
    manifest: dict[str, Any]
    funnel: list[tuple[str, int]] = field(default_factory=list)  # (step, records), in flow order
    drops: list[tuple[str, str, int]] = field(default_factory=list)  # (stage or filter, reason, count)
    rejected_examples: dict[tuple[str, str], list[Record]] = field(default_factory=dict)
    kept_examples: list[Record] = field(default_factory=list)
    length_unit: str = "words"
    instruction_lengths: list[int] = field(default_factory=list)
    response_lengths: list[int] = field(default_factory=list)
    turns: Counter[int] = field(default_factory=Counter)
    finish_reasons: Counter[str] = field(default_factory=Counter)
    language_scores: dict[str, list[float]] = field(default_factory=dict)
    languages_from: str = ""
    rouge_to_nearest: list[float] = field(default_factory=list)
    rouge_against: str = ""
    verb_objects: list[tuple[str, int]] = field(default_factory=list)
    with_verb_object: int = 0
    instructions_measured: int = 0
    distinct: dict[int, float] = field(default_factory=dict)
    sampled: bool = False
    # Times in seconds since the output's first run began (a resumed run continues the axis).
    replicas: dict[str, dict[int, list[tuple[float, float, int]]]] = field(default_factory=dict)
    # run -> replica -> [(time, tokens/s over the last RATE_WINDOW_S, requests in flight)]
    commits: list[tuple[float, int]] = field(default_factory=list)  # (time, records committed so far)


def measure(root: Location) -> Measures:
    manifest_file = root.child("manifest.json")
    manifest = json.loads(manifest_file.read_bytes()) if manifest_file.exists() else {}
    m = Measures(root, manifest)
    kept_counts = _read(root.child("data"), COUNTED_COLUMNS)
    rejected_counts = _read(root.child("rejected"), COUNTED_COLUMNS)
    kept = _sample(root.child("data"), TEXT_COLUMNS)
    rejected = _sample(root.child("rejected"), TEXT_COLUMNS + REJECTED_COLUMNS)
    m.sampled = len(kept) < len(kept_counts) or len(rejected) < len(rejected_counts)
    _funnel(m, kept_counts, rejected_counts)
    _examples(m, kept, rejected)
    everything = kept_counts + rejected_counts
    m.finish_reasons = Counter(r["finish_reason"] for r in everything if r["finish_reason"])
    _lengths(m, kept + rejected)
    _languages(m, kept_counts, kept)
    _diversity(m, kept + rejected)
    _engine(m)
    return m


def _read(directory: Location, columns: list[str]) -> list[Record]:
    return [row for f in directory.files(".parquet")
            for row in pq.read_table(f.path, columns=columns, filesystem=f.fs).to_pylist()]


def _sample(directory: Location, columns: list[str]) -> list[Record]:
    """Up to ``TEXT_SAMPLE`` records drawn from whole shards spread evenly over the output (only
    as many shards as the sample needs are read)."""
    files = directory.files(".parquet")
    rows = sum(pq.read_metadata(f.path, filesystem=f.fs).num_rows for f in files)
    needed = min(len(files), math.ceil(TEXT_SAMPLE * len(files) / rows)) if rows else 0
    chosen = [files[i * len(files) // needed] for i in range(needed)]
    records = [row for f in chosen for row in pq.read_table(f.path, columns=columns, filesystem=f.fs).to_pylist()]
    if len(records) > TEXT_SAMPLE:
        records = random.Random(0).sample(records, TEXT_SAMPLE)
    for record in records:
        record["metadata"] = json.loads(record["metadata"] or "{}")
    return records


def _funnel(m: Measures, kept: list[Record], rejected: list[Record]) -> None:
    totals = m.manifest.get("totals", {})
    seeds = m.manifest.get("seeds", {}).get("read")
    if seeds is not None:
        m.funnel.append(("seed records", seeds))
    m.funnel.append(("work items", totals.get("work_items", 0)))
    m.funnel.append(("records made", len(kept) + len(rejected)))
    for by, reasons in totals.get("dropped", {}).items():
        for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
            m.drops.append((by, reason, count))
    m.funnel.append(("kept", len(kept)))


def _examples(m: Measures, kept: list[Record], rejected: list[Record]) -> None:
    rng = random.Random(0)
    m.kept_examples = rng.sample(kept, min(KEPT_EXAMPLES, len(kept)))
    by_reason: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for record in rejected:
        record["drop_evidence"] = json.loads(record["drop_evidence"] or "{}")
        by_reason[(record["drop_filter"], record["drop_reason"])].append(record)
    m.rejected_examples = {key: records[:EXAMPLES_PER_REASON] for key, records in by_reason.items()}


def _lengths(m: Measures, records: list[Record]) -> None:
    instructions = [instruction_of(r) for r in records]
    responses = [response_of(r) for r in records if response_of(r)]
    tokenizer = _tokenizer(next(iter(engine_names(m.manifest.get("spec", {}))), None))  # the default engine's
    if tokenizer is None:
        m.instruction_lengths = [len(text.split()) for text in instructions]
        m.response_lengths = [len(text.split()) for text in responses]
    else:
        m.length_unit = "tokens"
        m.instruction_lengths = [len(e.ids) for e in tokenizer.encode_batch(instructions, add_special_tokens=False)]
        m.response_lengths = [len(e.ids) for e in tokenizer.encode_batch(responses, add_special_tokens=False)]
    m.turns = Counter(sum(message["role"] == "user" for message in r["messages"]) for r in records)


def engine_names(spec: dict) -> list[str]:
    """The models a spec (as the manifest holds it) names: its ``models``, or its one ``model``."""
    return [model["name"] for model in spec.get("models") or [spec.get("model") or {}] if "name" in model]


def _tokenizer(model: str | None):
    """The run's model's tokenizer (``tokenizer.json``), if it is on this machine; lengths are
    counted in words otherwise."""
    from tokenizers import Tokenizer

    if not model:
        return None
    embedded = EMBEDDED_MODELS.get(model)
    path = (cache_root() / embedded.dir_name if embedded else Path(model)) / "tokenizer.json"
    return Tokenizer.from_file(str(path)) if path.is_file() else None


def _languages(m: Measures, kept_counts: list[Record], kept: list[Record]) -> None:
    """The language_id filter's annotations; without that filter, its model run on the sample."""
    annotated = [r for r in kept_counts if r["lang"]]
    if not annotated and kept:
        from filters.langid import LanguageId, LanguageIdConfig

        annotated = [dict(r) for r in kept]
        LanguageId(LanguageIdConfig()).judge(annotated)
        annotated = [r for r in annotated if r.get("lang")]
        m.languages_from = "Detected for this report by the language_id filter's model (lid.176), on kept records"
    else:
        m.languages_from = "The language_id filter's annotations of kept records"
    scores: dict[str, list[float]] = defaultdict(list)
    for record in annotated:
        scores[record["lang"]].append(record["lang_score"])
    m.language_scores = dict(sorted(scores.items(), key=lambda item: -len(item[1])))


def _diversity(m: Measures, records: list[Record]) -> None:
    """Self-Instruct's measures: ROUGE-L of each written instruction with its most similar seed,
    or, when no stage wrote instructions, of each instruction with its most similar other one
    (all pairs of the text sample: 2,000 x 2,000 take under a second)."""
    written = [instruction_without_input(r) for r in records if has_machine_instruction(r)]
    if written:
        seeds = sorted({r["metadata"].get("seed_instruction") for r in records} - {None, ""})
        seeds = seeds or _seed_instructions(m.manifest)
        m.rouge_to_nearest = nearest_rouge_l(written, seeds) if seeds else []
        m.rouge_against = f"its most similar seed instruction ({len(seeds)} seeds)"
        instructions = written
    else:
        instructions = sorted({instruction_without_input(r) for r in records})
        m.rouge_to_nearest = nearest_rouge_l_among(instructions, range(len(instructions)))
        m.rouge_against = "its most similar other instruction (no stage wrote instructions in this run)"
    m.instructions_measured = len(instructions)
    pairs, without = verb_object_counts(instructions)
    m.with_verb_object = len(instructions) - without
    m.verb_objects = [(f"{verb} {noun or ''}".strip(), count) for (verb, noun), count in pairs.most_common(TOP_VERB_OBJECTS)]
    m.distinct = {n: distinct_n(instructions, n) for n in (1, 2)}


def _seed_instructions(manifest: dict[str, Any]) -> list[str]:
    """The spec's seed instructions, when its seed files are on this machine (a source stage such
    as self_instruct keeps no per-record seed)."""
    from gen.seeds import SeedError, SeedReader

    seeds = manifest.get("spec", {}).get("seeds")
    if not seeds:
        return []
    try:
        return sorted({instruction_without_input(r) for r in SeedReader(**seeds)} - {""})
    except (OSError, SeedError):
        return []


def _engine(m: Measures) -> None:
    samples = list(read_timeline(m.root))
    entries = sorted((json.loads(p.read_bytes()) for p in m.root.child("_commits").files(".json")),
                     key=lambda entry: entry["committed_at"])
    first = min([s["t"] for s in samples[:1]] + [e["committed_at"] for e in entries[:1]], default=0.0)
    window: dict[tuple[str, int], deque[tuple[float, int]]] = defaultdict(deque)
    for sample in samples:
        at, tokens = sample["t"], sample["completion_tokens"]
        recent = window[(sample["run"], sample["replica"])]
        recent.append((at, tokens))
        while at - recent[0][0] > RATE_WINDOW_S:
            recent.popleft()
        rate = (tokens - recent[0][1]) / (at - recent[0][0]) if at > recent[0][0] else 0.0
        m.replicas.setdefault(sample["run"], {}).setdefault(sample["replica"], []).append(
            (at - first, rate, sample["in_flight"]))
    committed = 0
    if entries:
        m.commits.append((0.0, 0))
    for entry in entries:
        committed += entry["kept_rows"] + entry["rejected_rows"]
        m.commits.append((entry["committed_at"] - first, committed))
