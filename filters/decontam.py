"""Decontamination: drop records that share a word n-gram with a benchmark prompt.

The benchmark prompts' n-grams (normalised like everything else: lowercase, punctuation folded)
are hashed once, at build time, into one sorted array; each batch's n-grams are hashed together
and looked up with one ``searchsorted``. A prompt shorter than ``ngram`` words is one n-gram of
its own length, so it matches a record text that is exactly that prompt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from filters.base import Drop, Filter, FilterConfig, Verdict
from filters.text import TextField, normalize, shingle_hashes, text_of
from gen.records import Record
from gen.storage import Location, read_lines


BENCHMARK_SUFFIXES = (".jsonl", ".json", ".parquet")


class BenchmarkFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str  # .jsonl, .json (a list of objects) or .parquet; a path or a URI (gen/storage.py)
    column: str  # the field holding the prompt, e.g. "question"
    name: str | None = None  # how evidence names it; default the file name without extension

    @field_validator("path")
    @classmethod
    def _readable_benchmark(cls, path: str) -> str:
        if Path(path).suffix not in BENCHMARK_SUFFIXES:
            raise ValueError(f"{path}: benchmark files are .jsonl, .json or .parquet")
        if not Location.of(path).exists():
            raise ValueError(f"no such file {path}")
        return path


class DecontaminationConfig(FilterConfig):
    type: Literal["decontamination"] = "decontamination"
    benchmarks: list[BenchmarkFile] = Field(min_length=1)
    # 13 words: GPT-3's contamination study and the n-gram overlap checks that followed it
    # (Brown et al. 2020, appendix C); long enough that common phrasing does not match.
    ngram: int = Field(13, ge=1)
    # "both" checks the instruction and the response, each on its own.
    text: TextField = "both"


def read_prompts(benchmark: BenchmarkFile) -> list[str]:
    """The non-empty string values of ``benchmark.column``."""
    path, suffix = Location.of(benchmark.path), Path(benchmark.path).suffix
    if suffix == ".parquet":
        values = pq.read_table(path.path, filesystem=path.fs, columns=[benchmark.column]).column(
            benchmark.column).to_pylist()
    elif suffix == ".jsonl":
        values = [json.loads(line).get(benchmark.column) for line in read_lines(path) if line.strip()]
    elif suffix == ".json":
        rows = json.loads(path.read_bytes())
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of objects")
        values = [row.get(benchmark.column) for row in rows]
    else:
        raise ValueError(f"{path}: benchmark files are .jsonl, .json or .parquet")
    prompts = [value for value in values if isinstance(value, str) and value.strip()]
    if not prompts:
        raise ValueError(f"{path}: no text in column {benchmark.column!r}")
    return prompts


class Decontamination(Filter):
    name = "decontamination"

    def __init__(self, config: DecontaminationConfig):
        super().__init__(config)
        self.benchmark_names = [b.name or Path(b.path).stem for b in config.benchmarks]
        hashes, owners = [], []
        for index, benchmark in enumerate(config.benchmarks):
            prompts = [normalize(prompt) for prompt in read_prompts(benchmark)]
            ngram_hashes, _ = shingle_hashes(prompts, config.ngram)
            hashes.append(ngram_hashes)
            owners.append(np.full(len(ngram_hashes), index, dtype=np.int32))
        all_hashes = np.concatenate(hashes)
        if not len(all_hashes):
            raise ValueError("decontamination: the benchmark prompts have no words")
        order = np.argsort(all_hashes, kind="stable")
        self._hashes = all_hashes[order]  # sorted, for searchsorted
        self._owners = np.concatenate(owners)[order]  # which benchmark each hash came from

    def judge(self, records: list[Record]) -> list[Verdict]:
        fields = ["instruction", "response"] if self.config.text == "both" else [self.config.text]
        texts = [normalize(text_of(record, field)) for record in records for field in fields]
        hashes, bounds = shingle_hashes(texts, self.config.ngram)
        positions = np.minimum(np.searchsorted(self._hashes, hashes), len(self._hashes) - 1)
        matched = np.flatnonzero(self._hashes[positions] == hashes)
        verdicts: list[Verdict] = [None] * len(records)
        text_index = np.searchsorted(bounds, matched, side="right") - 1
        for shingle, t in zip(matched.tolist(), text_index.tolist()):  # first match of each record wins
            record_index, field = divmod(t, len(fields))
            if verdicts[record_index] is None:
                words = texts[t].split()
                start = shingle - bounds[t]
                verdicts[record_index] = Drop("benchmark_overlap", {
                    "benchmark": self.benchmark_names[int(self._owners[positions[shingle]])],
                    "field": fields[field],
                    "ngram": " ".join(words[start : start + self.config.ngram]),
                })
        return verdicts
