"""Seed records in: JSONL, JSON arrays, Parquet and CSV, in the formats of the literature.

Self-Instruct seed tasks (``instruction`` + ``instances: [{input, output}]``), Alpaca records
(``instruction``, ``input``, ``output``), ``prompt``/``completion`` pairs (P3, OpenAI fine-tuning
files) and chat ``messages`` are recognised without being told; a given output becomes the
assistant turn (``respond`` answers afresh; ``sdg filter`` judges it as it is);
``format: rows`` passes labelled-dataset rows through for the ``template`` stage. A malformed line
stops the run with ``file:line: what is wrong``, or with ``on_error: skip`` is counted, reported
and left out. Malformed includes what only breaks later: text that is not UTF-8 (never guessed,
so never silently mangled), an escaped lone surrogate (``"\\ud800"``, valid JSON but not text), a
CSV row with more or fewer fields than its header. An empty file, or seeds that all fail, stop
the run: an empty run is never what was meant.

Parquet values that JSON has no type for are made JSON-safe where they are read, since a record's
``metadata`` (the whole row, for ``rows``) is JSON in the shard: dates and times become ISO 8601
strings, decimals their exact decimal string, durations seconds. Binary columns are refused: no
text form of an image or a blob is the right one.

Every seed becomes a record whose ``work_key`` is its content hash: the unit that is committed,
and skipped on resume, as a whole.

Seeds are a stream: files are read a block (JSONL, CSV) or a Parquet batch at a time, from a local
path or any filesystem :mod:`gen.storage` speaks (``s3://bucket/seeds/*.jsonl``), so ten million
seeds take the memory of one block, plus 8 bytes a seed to number identical ones. A ``.json``
array is parsed whole: JSON has no record boundaries to stream by; use JSONL for large seed sets.
"""

from __future__ import annotations

import csv
import datetime
import decimal
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gen.keyset import KeySet
from gen.records import Record, content_id
from gen.storage import Location, expand, read_blocks, read_lines

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
    read: int = 0  # records given out by the last iteration (a stream: known only as it goes)

    def files(self) -> list[Location]:
        found: list[Location] = []
        for index, pattern in enumerate(self.paths):
            try:
                matches = expand(pattern)
            except (OSError, ValueError) as exc:
                raise SeedError(f"seeds.paths[{index}]: {pattern}: {exc}") from None
            if not matches:
                raise SeedError(f"seeds.paths[{index}]: no file matches {pattern}")
            found.extend(matches)
        return found

    def __iter__(self) -> Iterator[Record]:
        self.read = 0
        # Identical seeds stay distinct records, stably numbered: the first occurrence of each
        # content is remembered (8 bytes), the count only of those that repeat.
        self._seen, self._repeats = KeySet(), Counter()
        for path in self.files():
            empty = True
            for where, raw in _raw_records(path):
                empty = False
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
                    self.read += 1
                    yield record
                    if self.limit is not None and self.read >= self.limit:
                        return
            if empty:
                raise SeedError(f"{path}: no seed records in the file")
        if not self.read:
            first = self.problems[0]
            raise SeedError(f"seeds: no usable seed record: all {self.skipped} were skipped "
                            f"(first: {first.where}: {first.what})")

    def count_rows(self) -> int:
        """The seed rows in the files (capped by ``limit``), counted without parsing a record: a
        Parquet file's from its metadata, a JSONL or CSV file's from its non-blank lines, a JSON
        array from its parse. For the progress line's total, beside the run: a row that turns out
        malformed, or a CSV field spanning lines, makes it an upper bound of the records; a
        Self-Instruct task with several instances is one row but as many records."""
        rows = 0
        for path in self.files():
            rows += _count_rows(path)
            if self.limit is not None and rows >= self.limit:
                return self.limit
        return rows

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
        if self._seen.add(content):
            record_id = content
        else:
            self._repeats[content] += 1
            record_id = content_id(content, self._repeats[content] + 1)
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


def _suffix(path: Location) -> str:
    """The file's format: ``.parquet``, ``.json``, ``.csv``, anything else is JSONL."""
    return "." + path.name.rsplit(".", 1)[-1].lower() if "." in path.name else ""


def _raw_records(path: Location) -> Iterator[tuple[str, Any]]:
    """(``file:line``, parsed object or SeedProblem) for every record of a seed file."""
    suffix = _suffix(path)
    try:
        if suffix == ".parquet":
            yield from _parquet_records(path)
        elif suffix == ".json":
            yield from _json_records(path, path.read_bytes())
        elif suffix == ".csv":
            yield from _csv_records(path, read_lines(path))
        else:
            yield from _jsonl_records(path, read_lines(path))
    except OSError as exc:
        raise SeedError(f"{path}: cannot read: {exc.strerror or exc}") from exc


# A line with a character that is not whitespace: blank as a JSONL line's ``strip()`` is blank.
_NON_BLANK_LINE = re.compile(rb"^[^\S\n]*\S", re.MULTILINE)


def _count_rows(path: Location) -> int:
    suffix = _suffix(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        with path.open() as f:
            return pq.ParquetFile(f).metadata.num_rows  # the footer: no row is read
    if suffix == ".json":
        parsed = json.loads(path.read_bytes())
        return len(parsed) if isinstance(parsed, list) else 0
    lines = sum(len(_NON_BLANK_LINE.findall(block)) for block in read_blocks(path))
    return max(lines - 1, 0) if suffix == ".csv" else lines  # a CSV file's first line is its header


def _json_records(path: Location, data: bytes) -> Iterator[tuple[str, Any]]:
    try:
        parsed = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        yield f"{path}:1", SeedProblem(str(path), _not_utf8(exc))
        return
    except json.JSONDecodeError as exc:
        yield f"{path}:{exc.lineno}", SeedProblem(str(path), f"not valid JSON: {exc}")
        return
    if not isinstance(parsed, list):
        yield f"{path}:1", SeedProblem(str(path), "a .json seed file must hold an array of records")
        return
    may_hold_surrogates = bool(_ESCAPED_SURROGATE.search(data))
    for index, item in enumerate(parsed):
        where = f"{path}:[{index}]"
        yield where, (_surrogate_problem(where, item) if may_hold_surrogates else None) or item


def _jsonl_records(path: Location, lines: Iterator[bytes]) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield where, SeedProblem(where, _not_utf8(exc))
        except json.JSONDecodeError as exc:
            yield where, SeedProblem(where, f"not valid JSON: {exc.msg} at column {exc.colno}")
        else:
            yield where, (_ESCAPED_SURROGATE.search(line) and _surrogate_problem(where, item)) or item


def _not_utf8(exc: UnicodeDecodeError) -> str:
    # Decoding is never guessed: Latin-1 decodes any bytes, so a wrong guess mangles text silently.
    return (f"not valid UTF-8 (byte {exc.start}); seed files are UTF-8: convert this one, "
            "e.g. iconv -f latin1 -t utf-8")


# JSON may escape half of a UTF-16 surrogate pair ("\ud800"); Python decodes it to a string that
# cannot be encoded, so the record would fail only when its shard is written.
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def _surrogate_problem(where: str, item: Any) -> SeedProblem | None:
    try:
        json.dumps(item, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        return SeedProblem(where, f"holds an unpaired surrogate {exc.object[exc.start:exc.end]!r}, which is not text")
    return None


def _csv_records(path: Location, raw_lines: Iterator[bytes]) -> Iterator[tuple[str, Any]]:
    """Rows as dicts by the header, each named by the line it starts on (a quoted field may span
    lines); a line that is not UTF-8, or a row whose field count differs from the header's, is a
    problem of that line."""
    undecodable: dict[int, str] = {}

    def lines() -> Iterator[str]:
        for number, raw in enumerate(raw_lines, start=1):
            try:
                yield raw.decode("utf-8") + "\n"  # a quoted field may hold line ends
            except UnicodeDecodeError as exc:
                undecodable[number] = _not_utf8(exc)
                yield "\n"  # read as a blank line; reported below instead

    rows = csv.reader(lines())
    header: list[str] | None = None
    last_line = 0
    try:
        for row in rows:
            start, last_line = last_line + 1, rows.line_num
            where = f"{path}:{start}"
            if start in undecodable:
                yield where, SeedProblem(where, undecodable[start])
            elif not row:
                continue
            elif header is None:
                header = row
            elif len(row) != len(header):
                fields = f"{len(row)} field{'s' if len(row) != 1 else ''}"
                yield where, SeedProblem(where, f"has {fields}, the header has {len(header)}")
            else:
                yield where, dict(zip(header, row, strict=True))
    except csv.Error as exc:
        where = f"{path}:{last_line + 1}"
        yield where, SeedProblem(where, f"not valid CSV: {exc}")


# Parquet rows converted to Python at a time: one batch is what a Parquet seed file costs in memory.
PARQUET_BATCH_ROWS = 4096


def _parquet_records(path: Location) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with path.open() as f:
        try:
            parquet = pq.ParquetFile(f)
            schema = parquet.schema_arrow
        except (pa.ArrowException, OSError) as exc:
            yield str(path), SeedProblem(str(path), f"not a readable Parquet file: {exc}")
            return
        for column in schema:
            if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type) \
                    or pa.types.is_fixed_size_binary(column.type):
                raise SeedError(f"{path}: column {column.name!r} is binary; seeds are text: drop the column "
                                "or cast it to string")
        convert = not all(_json_native(column.type) for column in schema)
        index = 0
        try:
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                for row in batch.to_pylist():
                    index += 1
                    where = f"{path}:row {index}"
                    if convert:
                        try:
                            row = {name: _json_safe(value) for name, value in row.items()}
                        except TypeError as exc:
                            yield where, SeedProblem(where, str(exc))
                            continue
                    yield where, row
        except (pa.ArrowException, OSError) as exc:
            where = f"{path}:row {index + 1}"
            yield where, SeedProblem(where, f"not a readable Parquet file: {exc}")


def _json_native(dtype: Any) -> bool:
    """Whether Arrow values of ``dtype`` come out of ``to_pylist`` as JSON types already."""
    import pyarrow as pa

    if pa.types.is_struct(dtype):
        return all(_json_native(field.type) for field in dtype)
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_fixed_size_list(dtype):
        return _json_native(dtype.value_type)
    if pa.types.is_dictionary(dtype):
        return _json_native(dtype.value_type)
    return (pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_integer(dtype)
            or pa.types.is_floating(dtype) or pa.types.is_boolean(dtype) or pa.types.is_null(dtype))


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):  # a map column's entries come as (key, value) tuples
        return [_json_safe(item) for item in value]
    if isinstance(value, datetime.date | datetime.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)  # exact, where a float would round
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        raise TypeError("holds binary data in a nested field; seeds are text")
    return value
