"""`sdg filter` on Ray Data workers (filters/parallel.py), on the session's real Ray with the real
filters: the same records kept and dropped, for the same reasons, as the chain applied in this
process; a resume after Ctrl-C judges only what is not committed and ends as an uninterrupted run;
a malformed line is counted and reported, naming its file and line, or stops the run; more workers
than the cluster has CPUs are refused before any starts.

One run, stopped by Ctrl-C after its second shard and resumed (``runs``), serves every test: each
run starts its own workers (Ray worker processes, each loading the fastText model), which is most
of a run's time here."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from cluster.engine import ResourcesUnavailable
from filters import build_chain
from filters.parallel import judged_on_workers
from filters.quality import ResponseRulesConfig
from gen.keyset import KeySet
from gen.run import run
from gen.seeds import SeedError, SeedReader
from gen.sink import ShardSink
from gen.spec import load_spec
from tests.filter_corpus import corpus_rows
from tests.runs import run_stopped_by_ctrl_c_after_shard

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
    index_shards: 1  # one actor process fewer to start per run; several shards: test_filters_dedup.py
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


@pytest.fixture(scope="module")
def runs(corpus, ray_session) -> dict:
    """A run into ``corpus / "out"`` stopped by Ctrl-C after its second shard, then resumed: both
    manifests, and what the workers would judge in between."""
    spec = load_spec(corpus / "spec.yaml", [f"output.dir={corpus / 'out'}"])
    run_stopped_by_ctrl_c_after_shard(spec)
    stopped = json.loads((corpus / "out" / "manifest.json").read_text())
    sink = ShardSink.open(corpus / "out", spec.identity(), "zstd")
    committed = sink.committed.keys
    sink.close()
    seeds = SeedReader(**spec.seeds.model_dump())
    left = list(judged_on_workers(seeds, [], committed, 1, 64))
    return {"stopped": stopped, "committed": committed, "left": left, "left_read": seeds.read,
            "resumed": run(spec, progress=False, report=False)}


@pytest.fixture(scope="module")
def in_process(corpus, ray_session) -> tuple[list[str], dict[str, tuple]]:
    """The corpus's record ids, in input order, and per id what the whole chain applied in this
    process decides, as :func:`outcome` reads a run's shards."""
    spec = load_spec(corpus / "spec.yaml", [f"output.dir={corpus / 'unused'}"])
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
                                     r.get("minhash"))  # dedup's signature: made on the workers in a run
    finally:
        chain.close()
    return [r["id"] for r in records], expected


def outcome(root) -> dict[str, tuple]:
    """Per record id: (drop filter, drop reason, evidence, lang, dedup's signature), from the
    committed shards."""
    rows = pq.read_table(root / "data").to_pylist() + pq.read_table(root / "rejected").to_pylist()
    return {r["id"]: (r["drop_filter"], r["drop_reason"], json.loads(r["drop_evidence"] or "null"), r["lang"],
                      r["minhash"]) for r in rows}


def test_workers_keep_and_drop_what_the_chain_does_in_process(corpus, runs, in_process):
    ids, expected = in_process
    assert outcome(corpus / "out") == expected
    kept = pq.read_table(corpus / "out" / "data", columns=["id"]).column("id").to_pylist()
    assert kept == [i for i in ids if expected[i][0] is None]  # in input order
    # The corpus holds what each filter is for, so the comparison covers every kind of decision.
    reasons = {reason for _, reason, *_ in expected.values()}
    assert {"near_duplicate", "exact_duplicate", "response_empty", "lang_not_allowed", "refusal"} <= reasons
    # the malformed line: skipped, counted and reported through the stream, naming its file and line
    manifest = runs["resumed"]
    assert manifest["seeds"]["skipped"] == 1 and manifest["seeds"]["read"] == RECORDS
    [problem] = manifest["seeds"]["problems"]
    assert problem["where"] == f"{corpus / 'corpus.jsonl'}:{MALFORMED_LINE}" and problem["what"].startswith("not valid JSON")


def test_a_run_stopped_by_ctrl_c_resumes_without_judging_committed_records_again(runs, in_process):
    stopped, committed = runs["stopped"], runs["committed"]
    # Intake runs ahead of commits by at most the buffer (2 shards) and a worker's batch.
    assert stopped["status"] == "interrupted" and 100 <= stopped["totals"]["records"] < RECORDS
    # What the workers judge on resume: only the records not committed, every seed read to number
    # identical ones as the first run did.
    left = runs["left"]
    assert len(left) == RECORDS - len(committed) and not any(r["work_key"] in committed for r in left)
    assert runs["left_read"] == RECORDS
    resumed = runs["resumed"]
    assert resumed["status"] == "complete" and resumed["this_run"]["resumed_from_shards"] >= 2
    # It ends as an uninterrupted run would: the in-process chain's decisions, all of them committed.
    _, expected = in_process
    kept = sum(1 for decision in expected.values() if decision[0] is None)
    assert (resumed["totals"]["records"], resumed["totals"]["kept"]) == (RECORDS, kept)


def test_a_malformed_line_stops_a_run_that_does_not_skip_naming_file_and_line(corpus, ray_session):
    path = corpus / "corpus.jsonl"
    with pytest.raises(SeedError, match=rf"^{path}:{MALFORMED_LINE}: not valid JSON.*on_error: skip"):
        list(judged_on_workers(SeedReader([str(path)]), [], KeySet(), 1, 2))


def test_more_workers_than_the_cluster_has_cpus_are_refused_at_once_naming_the_field(corpus, ray_session):
    seeds = SeedReader([str(corpus / "corpus.jsonl")], on_error="skip")
    with pytest.raises(ResourcesUnavailable, match=r"^filter_workers.concurrency \(99\) needs 99 CPUs, the Ray cluster has"):
        next(judged_on_workers(seeds, [ResponseRulesConfig()], KeySet(), 99, 10))
