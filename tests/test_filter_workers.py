"""`sdg filter` on Ray Data workers (filters/parallel.py), on the session's real Ray with the real
filters: the same records kept and dropped, for the same reasons, as the chain applied in this
process; a resume after Ctrl-C judges only what is not committed and ends as the uninterrupted run;
a malformed line is counted and reported, naming its file and line, or stops the run; more workers
than the cluster has CPUs are refused before any starts.

One uninterrupted run of the corpus (``reference``) serves every test: each run starts its own
workers (Ray worker processes, each loading the fastText model), which is most of a run's time."""

from __future__ import annotations

import json
import os
import signal

import pyarrow.parquet as pq
import pytest

from cluster.engine import ResourcesUnavailable
from filters import build_chain
from filters.parallel import judged_on_workers
from filters.quality import ResponseRulesConfig
from gen.errors import Interrupted
from gen.keyset import KeySet
from gen.run import run
from gen.seeds import SeedError, SeedReader
from gen.sink import ShardSink
from gen.spec import load_spec
from tests.filter_corpus import corpus_rows

RECORDS = 500
MALFORMED_LINE = 3  # the corpus file's line 3 is cut short: not JSON

SPEC = """\
seeds: {paths: [corpus.jsonl], on_error: skip}
filters:
  - type: response_rules
  - type: refusal
  - type: gopher_repetition
  - type: gopher_quality
  - type: language_id
  - type: dedup
    text: both
output: {dir: out, rows_per_shard: 50}
filter_workers: {concurrency: 2, batch_size: 37}
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The directory holding the corpus (with one malformed line) and the spec."""
    root = tmp_path_factory.mktemp("filter-workers")
    lines = [json.dumps(row) for row in corpus_rows(RECORDS)]
    lines.insert(MALFORMED_LINE - 1, '{"instruction": "Name a colour.", "output": ')
    (root / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    (root / "spec.yaml").write_text(SPEC)
    return root


def filter_spec(root, out: str):
    return load_spec(root / "spec.yaml", [f"output.dir={root / out}"])


@pytest.fixture(scope="module")
def reference(corpus, ray_session) -> dict:
    """The manifest of an uninterrupted run into ``corpus / "reference"``."""
    return run(filter_spec(corpus, "reference"), progress=False, report=False)


def outcome(root) -> dict[str, tuple]:
    """Per record id: (drop filter, drop reason, evidence, lang, dedup's signature), from the
    committed shards."""
    rows = pq.read_table(root / "data").to_pylist() + pq.read_table(root / "rejected").to_pylist()
    return {r["id"]: (r["drop_filter"], r["drop_reason"], json.loads(r["drop_evidence"] or "null"), r["lang"],
                      r["minhash"]) for r in rows}


def test_workers_keep_and_drop_what_the_chain_does_in_process(corpus, reference):
    assert reference["status"] == "complete" and reference["totals"]["records"] == RECORDS
    spec = filter_spec(corpus, "reference")
    chain = build_chain(spec.filters)
    expected = {}
    try:
        records = list(SeedReader(**spec.seeds.model_dump()))
        for start in range(0, len(records), spec.output.rows_per_shard):  # as the run commits: shard by shard
            batch = records[start : start + spec.output.rows_per_shard]
            chain(batch)
            for r in batch:
                drop = r.get("_drop") or {}
                evidence = json.loads(json.dumps(drop["evidence"], default=str)) if drop else None
                expected[r["id"]] = (drop.get("filter"), drop.get("reason"), evidence, r.get("lang"),
                                     r.get("minhash"))  # dedup's signature: made on the workers there
    finally:
        chain.close()
    assert outcome(corpus / "reference") == expected
    kept = pq.read_table(corpus / "reference" / "data", columns=["id"]).column("id").to_pylist()
    assert kept == [r["id"] for r in records if expected[r["id"]][0] is None]  # in input order
    # The corpus holds what each filter is for, so the comparison covers every kind of decision.
    reasons = {reason for _, reason, *_ in expected.values()}
    assert {"near_duplicate", "exact_duplicate", "response_empty", "lang_not_allowed", "refusal"} <= reasons
    # the malformed line: skipped, counted and reported through the stream, naming its file and line
    assert reference["seeds"]["skipped"] == 1 and reference["seeds"]["read"] == RECORDS
    [problem] = reference["seeds"]["problems"]
    assert problem["where"] == f"{corpus / 'corpus.jsonl'}:{MALFORMED_LINE}" and problem["what"].startswith("not valid JSON")


def test_a_run_stopped_by_ctrl_c_resumes_without_judging_committed_records_again(corpus, reference, monkeypatch):
    spec = filter_spec(corpus, "resumed")
    commit = ShardSink.commit

    def commit_then_ctrl_c(self, *args, **kwargs):
        entry = commit(self, *args, **kwargs)
        if entry["shard"] == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return entry

    monkeypatch.setattr(ShardSink, "commit", commit_then_ctrl_c)
    with pytest.raises(Interrupted):
        run(spec, progress=False, report=False)
    monkeypatch.setattr(ShardSink, "commit", commit)
    stopped = json.loads((corpus / "resumed" / "manifest.json").read_text())
    committed = stopped["totals"]["records"]
    # Intake runs ahead of commits by at most the buffer (2 shards) and a worker's batch.
    assert stopped["status"] == "interrupted" and 100 <= committed < RECORDS

    # What the workers would judge on resume: only the records not committed.
    sink = ShardSink.open(corpus / "resumed", spec.identity(), "zstd")
    done = sink.committed.keys
    sink.close()
    seeds = SeedReader(**spec.seeds.model_dump())
    left = list(judged_on_workers(seeds, [], done, 1, 64))
    assert len(left) == RECORDS - committed and not any(r["work_key"] in done for r in left)
    assert seeds.read == RECORDS  # every seed was read, to number identical ones as the first run did

    resumed = run(spec, progress=False, report=False)
    assert resumed["status"] == "complete" and resumed["this_run"]["resumed_from_shards"] >= 2
    assert outcome(corpus / "resumed") == outcome(corpus / "reference")
    assert resumed["totals"] == reference["totals"]


def test_a_malformed_line_stops_a_run_that_does_not_skip_naming_file_and_line(corpus, ray_session):
    path = corpus / "corpus.jsonl"
    with pytest.raises(SeedError, match=rf"^{path}:{MALFORMED_LINE}: not valid JSON.*on_error: skip"):
        list(judged_on_workers(SeedReader([str(path)]), [], KeySet(), 1, 2))


def test_more_workers_than_the_cluster_has_cpus_are_refused_at_once_naming_the_field(corpus, ray_session):
    seeds = SeedReader([str(corpus / "corpus.jsonl")], on_error="skip")
    with pytest.raises(ResourcesUnavailable, match=r"^filter_workers.concurrency \(99\) needs 99 CPUs, the Ray cluster has"):
        next(judged_on_workers(seeds, [ResponseRulesConfig()], KeySet(), 99, 10))
