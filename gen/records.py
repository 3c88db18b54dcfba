"""What a record is, from the first stage to the Parquet shard.

A record is a plain dict (cheap to create, pickle and batch) whose keys are the columns below.
``messages`` is the canonical content, in the chat format trainers read; everything else is
lineage. Stage-specific lineage (evol_op, most similar pool instruction, ...) goes in ``metadata``,
a dict while in flight and JSON in the shard, so that every shard of every run has one schema.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

Record = dict[str, Any]

MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))

# One schema for kept and rejected shards (the drop columns are null in data/), so that one
# dataset holds both as splits: `datasets` reads the splits of a config with one set of features.
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("messages", MESSAGES_TYPE),
        ("seed_id", pa.string()),
        ("method", pa.string()),  # the chain of stages that made it, e.g. "self_instruct>respond"
        ("stage", pa.string()),  # the last stage
        ("template", pa.string()),  # prompt template name of the last LLM stage
        ("template_hash", pa.string()),
        ("round", pa.int32()),
        ("model", pa.string()),
        ("sampling", pa.string()),  # JSON of the vLLM SamplingParams used
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("finish_reason", pa.string()),
        ("created_at", pa.timestamp("ms", tz="UTC")),
        ("lang", pa.string()),
        ("lang_score", pa.float32()),
        ("minhash", pa.binary()),  # near-dedup signature, so later runs seed their index from it
        ("metadata", pa.string()),  # JSON object
        ("scores", pa.string()),  # JSON object: a judge's score per aspect (null when not judged)
        ("rationale", pa.string()),  # the judge's reasons for them
        ("chosen", MESSAGES_TYPE),  # a preference pair (the pairs stage): the better-rated conversation
        ("rejected", MESSAGES_TYPE),  # and the worse one, as TRL's DPOTrainer reads them
        ("work_key", pa.string()),  # the unit of resume: all records of one work item commit together
        ("drop_filter", pa.string()),  # the stage or filter that rejected it
        ("drop_reason", pa.string()),
        ("drop_evidence", pa.string()),  # JSON object
    ]
)

# json.dumps builds an encoder per call when given options, several times the cost of encoding a
# record's few fields; these are built once (the same class and options: the same text).
_ID_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str)
_CELL_JSON = json.JSONEncoder(ensure_ascii=False)
_EVIDENCE_JSON = json.JSONEncoder(ensure_ascii=False, default=str)

DROP_KEY = "_drop"
"""Set on a record that a stage or filter rejected: {"filter", "reason", "evidence"}."""


def content_id(*parts: Any) -> str:
    """A stable id from the things that determine a record (seed, stage, model, sampling, ...)."""
    payload = _ID_JSON.encode(parts)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def drop(record: Record, by: str, reason: str, **evidence: Any) -> Record:
    """Mark ``record`` as rejected by ``by`` (a stage or filter name) with a snake_case reason."""
    record[DROP_KEY] = {"filter": by, "reason": reason, "evidence": evidence}
    return record


def is_dropped(record: Record) -> bool:
    return DROP_KEY in record


def instruction_of(record: Record) -> str:
    """The first user turn: what the record asks."""
    for message in record.get("messages") or ():
        if message["role"] == "user":
            return message["content"]
    return ""


def response_of(record: Record) -> str:
    """The last assistant turn: what the model answered ("" before a responding stage)."""
    for message in reversed(record.get("messages") or ()):
        if message["role"] == "assistant":
            return message["content"]
    return ""


def to_table(records: list[Record]) -> pa.Table:
    """Records as a table of the shard schema; unknown keys are never written."""
    # One comprehension per column: cheaper than appending cell by cell.
    columns = {name: [record.get(name) for record in records] for name in SCHEMA.names}
    columns["metadata"] = [_CELL_JSON.encode(record.get("metadata") or {}) for record in records]
    columns["scores"] = [None if record.get("scores") is None else json.dumps(record["scores"]) for record in records]
    for at, record in enumerate(records):
        if is_dropped(record):
            verdict = record[DROP_KEY]
            columns["drop_filter"][at] = verdict["filter"]
            columns["drop_reason"][at] = verdict["reason"]
            columns["drop_evidence"][at] = _EVIDENCE_JSON.encode(verdict["evidence"])
    return pa.table(columns, schema=SCHEMA)
