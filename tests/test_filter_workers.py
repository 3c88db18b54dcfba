"""`sdg filter` on Ray Data workers (filters/parallel.py), on the session's real Ray with the real
filters: the same records kept and dropped, for the same reasons, as the chain applied in this
process; a resume after Ctrl-C judges only what is not committed and ends as an uninterrupted run;
a malformed line is counted and reported, naming its file and line, or stops the run; more
workers than the cluster has CPUs are refused before any starts."""

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
from tests.filter_corpus import corpus_rows, write_jsonl

SPEC = """\
seeds: {paths: [corpus.jsonl]}
filters:
  - type: response_rules
  - type: refusal
  - type: gopher_repetition
  - type: gopher_quality
  - type: language_id
  - type: dedup
    text: both
output: {dir: out, rows_per_shard: 100}
filter_workers: {concurrency: 2, batch_size: 37}
"""


def filter_spec(tmp_path, records: int, out: str = "out", overrides: list[str] = ()):
    write_jsonl(tmp_path / "corpus.jsonl", records)
    (tmp_path / "spec.yaml").write_text(SPEC)
    return load_spec(tmp_path / "spec.yaml", [f"output.dir={tmp_path / out}", *overrides])


def outcome(root) -> dict[str, tuple]:
    """Per record id: (drop filter, drop reason, evidence, lang), from the committed shards."""
    rows = pq.read_table(root / "data").to_pylist() + pq.read_table(root / "rejected").to_pylist()
    return {r["id"]: (r["drop_filter"], r["drop_reason"], json.loads(r["drop_evidence"] or "null"), r["lang"])
            for r in rows}


def test_workers_keep_and_drop_what_the_chain_does_in_process(tmp_path, ray_session):
    spec = filter_spec(tmp_path, 600)
    manifest = run(spec, progress=False, report=False)
    assert manifest["status"] == "complete" and manifest["totals"]["records"] == 600

    chain = build_chain(spec.filters)
    expected = {}
    try:
        records = list(SeedReader(spec.seeds.paths))
        for start in range(0, len(records), spec.output.rows_per_shard):  # as the run commits: shard by shard
            batch = records[start : start + spec.output.rows_per_shard]
            chain(batch)
            for r in batch:
                drop = r.get("_drop") or {}
                evidence = json.loads(json.dumps(drop["evidence"], default=str)) if drop else None
                expected[r["id"]] = (drop.get("filter"), drop.get("reason"), evidence, r.get("lang"))
    finally:
        chain.close()
    assert outcome(tmp_path / "out") == expected
    kept = pq.read_table(tmp_path / "out" / "data", columns=["id"]).column("id").to_pylist()
    assert kept == [r["id"] for r in records if expected[r["id"]][0] is None]  # in input order
    # The corpus holds what each filter is for, so the comparison covers every kind of decision.
    reasons = {reason for _, reason, _, _ in expected.values()}
    assert {"near_duplicate", "exact_duplicate", "response_empty", "lang_not_allowed", "refusal"} <= reasons


def test_a_run_stopped_by_ctrl_c_resumes_without_judging_committed_records_again(tmp_path, ray_session, monkeypatch):
    one_worker = ["filter_workers.concurrency=1"]  # several workers' order is the test above's
    reference = run(filter_spec(tmp_path, 1000, "reference", one_worker), progress=False, report=False)
    spec = filter_spec(tmp_path, 1000, overrides=one_worker)
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
    stopped = json.loads((tmp_path / "out" / "manifest.json").read_text())
    committed = stopped["totals"]["records"]
    # Intake runs ahead of commits by the buffer (2 shards) and the free slots (256 work items).
    assert stopped["status"] == "interrupted" and 200 <= committed < 1000

    # What the workers would judge on resume: only the records not committed.
    sink = ShardSink.open(tmp_path / "out", spec.identity(), "zstd")
    done = sink.committed.keys
    sink.close()
    seeds = SeedReader(spec.seeds.paths)
    left = list(judged_on_workers(seeds, [], done, 1, 64))
    assert len(left) == 1000 - committed and not any(r["work_key"] in done for r in left)
    assert seeds.read == 1000  # every seed was read, to number identical ones as the first run did

    resumed = run(spec, progress=False, report=False)
    assert resumed["status"] == "complete" and resumed["this_run"]["resumed_from_shards"] >= 2
    assert outcome(tmp_path / "out") == outcome(tmp_path / "reference")
    assert resumed["totals"] == reference["totals"]


def test_a_malformed_line_is_counted_and_reported_or_stops_the_run_naming_file_and_line(tmp_path, ray_session):
    lines = [json.dumps(row) for row in corpus_rows(5)]
    lines.insert(2, '{"instruction": "Name a colour.", "output": ')
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")

    skipping = SeedReader([str(path)], on_error="skip")
    records = list(judged_on_workers(skipping, [], KeySet(), 1, 2))
    assert len(records) == 5 and skipping.read == 5 and skipping.skipped == 1
    assert [(p.where, p.what.split(":")[0]) for p in skipping.problems] == [(f"{path}:3", "not valid JSON")]

    with pytest.raises(SeedError, match=rf"^{path}:3: not valid JSON.*on_error: skip"):
        list(judged_on_workers(SeedReader([str(path)]), [], KeySet(), 1, 2))

    # Through a run: dedup alone (no worker to start), so the stream's counters reach the manifest.
    (tmp_path / "spec.yaml").write_text(
        "seeds: {paths: [corpus.jsonl], on_error: skip}\nfilters: [{type: dedup}]\noutput: {dir: out}\n")
    manifest = run(load_spec(tmp_path / "spec.yaml", [f"output.dir={tmp_path / 'out'}"]), progress=False,
                   report=False)
    assert manifest["seeds"]["skipped"] == 1 and manifest["seeds"]["problems"][0]["where"] == f"{path}:3"
    assert manifest["totals"]["records"] == 5


def test_more_workers_than_the_cluster_has_cpus_are_refused_at_once_naming_the_field(tmp_path, ray_session):
    seeds = SeedReader([str(write_jsonl(tmp_path / "corpus.jsonl", 5))])
    with pytest.raises(ResourcesUnavailable, match=r"^filter_workers.concurrency \(99\) needs 99 CPUs, the Ray cluster has"):
        next(judged_on_workers(seeds, [ResponseRulesConfig()], KeySet(), 99, 10))
