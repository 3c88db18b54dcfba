"""Seed records in: JSONL, JSON arrays, Parquet and CSV, in the formats of the literature.

Self-Instruct seed tasks (``instruction`` + ``instances: [{input, output}]``), Alpaca records
(``instruction``, ``input``, ``output``), ``prompt``/``completion`` pairs (P3, OpenAI fine-tuning
files) and chat ``messages`` are recognised without being told; a given output becomes the
assistant turn (``respond`` answers afresh; ``sdg filter`` judges it as it is);
``format: rows`` passes labelled-dataset rows through for the ``template`` stage. A malformed line
stops the run with ``file:line: what is wrong``, or with ``on_error: skip`` is counted, reported
and left out.

Every seed becomes a record whose ``work_key`` is its content hash: the unit that is committed,
and skipped on resume, as a whole.
"""

from __future__ import annotations

import csv
import glob
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gen.records import Record, content_id

MAX_REPORTED_PROBLEMS = 100


class SeedError(ValueError):
    """A seed that cannot be used; the message starts with ``file:line:``."""


@dataclass
class SeedProblem:
    where: str  # "file:line"
    what: str


@dataclass
class SeedReader:
    """Iterate to get seed records; ``problems`` lists what was skipped (with on_error=skip)."""

    paths: list[str]
    format: str = "auto"  # see SeedsSpec.format
    on_error: str = "fail"
    limit: int | None = None
    problems: list[SeedProblem] = field(default_factory=list)
    skipped: int = 0
    _seen: Counter = field(default_factory=Counter)

    def files(self) -> list[Path]:
        found: list[Path] = []
        for index, pattern in enumerate(self.paths):
            matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else (
                [pattern] if Path(pattern).exists() else [])
            if not matches:
                raise SeedError(f"seeds.paths[{index}]: no file matches {pattern}")
            found.extend(Path(m) for m in matches)
        return found

    def __iter__(self) -> Iterator[Record]:
        produced = 0
        for path in self.files():
            for where, raw in _raw_records(path):
                try:
                    if isinstance(raw, SeedProblem):
                        raise SeedError(raw.what)
                    records = self._to_records(raw, where)
                except SeedError as exc:
                    problem = SeedProblem(where, str(exc))
                    if self.on_error == "fail":
                        raise SeedError(f"{where}: {exc} (set seeds.on_error: skip to skip such lines)") from None
                    self.skipped += 1
                    if len(self.problems) < MAX_REPORTED_PROBLEMS:
                        self.problems.append(problem)
                    continue
                for record in records:
                    yield record
                    produced += 1
                    if self.limit is not None and produced >= self.limit:
                        return

    def _to_records(self, raw: Any, where: str) -> list[Record]:
        if not isinstance(raw, dict):
            raise SeedError(f"expected an object, got {type(raw).__name__}")
        kind = self.format if self.format != "auto" else _recognise(raw)
        if kind == "rows":
            return [self._record(raw, where, [], {"row": raw})]
        if kind == "messages":
            return [self._record(raw, where, _messages(raw), {})]
        if kind == "prompt_completion":
            prompt, completion = raw.get("prompt"), raw.get("completion")
            if not isinstance(prompt, str) or not prompt.strip() or not isinstance(completion, str):
                raise SeedError("'prompt' must be a non-empty string and 'completion' a string")
            return [self._record(raw, where, [{"role": "user", "content": prompt},
                                              {"role": "assistant", "content": completion}], {})]
        instruction = raw.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            raise SeedError("'instruction' must be a non-empty string")
        if kind == "self_instruct":
            instances = raw.get("instances") or [{"input": "", "output": ""}]
            if not isinstance(instances, list) or not all(isinstance(i, dict) for i in instances):
                raise SeedError("'instances' must be a list of {input, output} objects")
        else:
            instances = [{"input": raw.get("input") or "", "output": raw.get("output") or ""}]
        records = []
        for instance in instances:
            seed_input, seed_output = instance.get("input") or "", instance.get("output") or ""
            if not isinstance(seed_input, str) or not isinstance(seed_output, str):
                raise SeedError("'input' and 'output' must be strings")
            prompt = f"{instruction.strip()}\n\n{seed_input.strip()}" if seed_input.strip() else instruction.strip()
            metadata = {
                "seed_instruction": instruction,
                "seed_input": seed_input,
                "seed_output": seed_output,
                "is_classification": bool(raw.get("is_classification", False)),
            }
            messages = [{"role": "user", "content": prompt}]
            if seed_output.strip():
                messages.append({"role": "assistant", "content": seed_output})
            records.append(self._record(raw, where, messages, metadata))
        return records

    def _record(self, raw: dict, where: str, messages: list, metadata: dict) -> Record:
        content = content_id(messages, metadata)
        self._seen[content] += 1  # identical seeds stay distinct records, stably numbered
        record_id = content_id(content, self._seen[content]) if self._seen[content] > 1 else content
        seed_id = raw.get("id")
        return {
            "id": record_id,
            "work_key": record_id,
            "seed_id": str(seed_id) if seed_id is not None else record_id,
            "method": "seed",
            "messages": messages,
            "metadata": {**metadata, "seed_source": where},
        }


def _recognise(raw: dict) -> str:
    if "messages" in raw:
        return "messages"
    if "instances" in raw:
        return "self_instruct"
    if "instruction" in raw:
        return "alpaca"
    if "prompt" in raw and "completion" in raw:
        return "prompt_completion"
    raise SeedError(
        f"not a recognised seed record (keys: {', '.join(sorted(raw)) or 'none'}); expected "
        "'instruction' (Self-Instruct / Alpaca), 'messages' or 'prompt' + 'completion', "
        "or set seeds.format: rows"
    )


def _messages(raw: dict) -> list[dict[str, str]]:
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SeedError("'messages' must be a non-empty list of {role, content}")
    out = []
    for index, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise SeedError(f"messages[{index}] must be an object with string 'role' and 'content'")
        if message["role"] not in ("system", "user", "assistant"):
            raise SeedError(f"messages[{index}].role must be system, user or assistant")
        out.append({"role": message["role"], "content": message["content"]})
    return out


def _raw_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(``file:line``, parsed object or SeedProblem) for every record of a seed file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for index, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield f"{path}:row {index}", row
        return
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SeedError(f"{path}: cannot read: {exc.strerror}") from exc
    if suffix == ".json":
        try:
            parsed = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            yield f"{path}:{getattr(exc, 'lineno', 1)}", SeedProblem(str(path), f"not valid JSON: {exc}")
            return
        if not isinstance(parsed, list):
            yield f"{path}:1", SeedProblem(str(path), "a .json seed file must hold an array of records")
            return
        for index, item in enumerate(parsed):
            yield f"{path}:[{index}]", item
        return
    if suffix == ".csv":
        text = data.decode("utf-8", errors="replace")
        for index, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
            yield f"{path}:{index}", dict(row)
        return
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield where, json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield where, SeedProblem(where, f"not valid UTF-8 (byte {exc.start})")
        except json.JSONDecodeError as exc:
            yield where, SeedProblem(where, f"not valid JSON: {exc.msg} at column {exc.colno}")
