import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from gen.records import drop
from gen.sink import OutputError, ShardSink

IDENTITY = {"spec": 1}


def record(i, work_key=None):
    return {"id": f"r{i}", "work_key": work_key or f"w{i}", "messages": [{"role": "user", "content": f"q{i}"}],
            "prompt_tokens": 2, "completion_tokens": 3}


def open_sink(root, identity=IDENTITY):
    return ShardSink.open(root, identity, compression="zstd")


def test_commit_writes_shards_journal_and_totals(tmp_path):
    sink = open_sink(tmp_path)
    rejected = drop(record(2), "dedup", "near_duplicate", duplicate_of="r1", similarity=0.9)
    entry = sink.commit([record(1)], [rejected], ["w1", "w2"], {"dedup": {"near_duplicate": 1}})
    assert entry["data"] == f"data/part-00000-{sink.writer}.parquet"
    assert entry["rejected"] == f"rejected/part-00000-{sink.writer}.parquet"
    row = pq.read_table(tmp_path / entry["rejected"]).to_pylist()[0]
    assert (row["drop_filter"], row["drop_reason"]) == ("dedup", "near_duplicate")
    assert json.loads(row["drop_evidence"]) == {"duplicate_of": "r1", "similarity": 0.9}
    journal = json.loads((tmp_path / "_commits/00000.json").read_text())
    assert journal["work_keys"] == ["w1", "w2"] and set(journal["files"]) == {entry["data"], entry["rejected"]}
    totals = sink.totals()
    assert (totals["kept"], totals["rejected"], totals["prompt_tokens"], totals["completion_tokens"]) == (1, 1, 4, 6)
    assert (totals["work_items"], totals["dropped"]) == (2, {"dedup": {"near_duplicate": 1}})
    assert len(sink.committed.keys) == 0  # this run's own work keys are counted, not held: it never meets them again
    sink.close()
    reopened = open_sink(tmp_path)
    keys = reopened.committed.keys
    assert ("w1" in keys, "w2" in keys, "w3" in keys, len(keys)) == (True, True, False, 2)
    assert reopened.next_shard == 1


def test_recovery_keeps_committed_shards_and_deletes_uncommitted_ones(tmp_path):
    sink = open_sink(tmp_path)
    committed = sink.commit([record(1)], [], ["w1"], {})
    sink.close()
    # a crash after a later commit wrote its shard, before its journal entry (the commit point)
    (tmp_path / "data/part-00001-deadbeef.parquet").write_bytes(b"half written")
    (tmp_path / "_commits/.00001.json.tmp").write_text("{")
    recovered = open_sink(tmp_path)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [committed["data"].split("/")[1]]
    assert not list((tmp_path / "_commits").glob(".*.tmp"))
    assert "w1" in recovered.committed.keys and recovered.next_shard == 1
    assert [r["id"] for r in recovered.committed.records(["id"])] == ["r1"]
    # the next commit reuses shard number 1 under its own writer's name
    assert recovered.commit([record(2)], [], ["w2"], {})["data"] == f"data/part-00001-{recovered.writer}.parquet"


def test_committed_records_are_read_in_batches_of_the_columns_asked_for(tmp_path, monkeypatch):
    import gen.sink

    monkeypatch.setattr(gen.sink, "READ_BATCH_ROWS", 3)
    sink = open_sink(tmp_path)
    sink.commit([record(i) for i in range(7)], [], [f"w{i}" for i in range(7)], {})
    batches = list(sink.committed.batches(["id", "work_key", "no_such_column"], kinds=("data",)))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert batches[0][0] == {"id": "r0", "work_key": "w0"}
    sink.close()


def test_a_second_run_into_the_same_dir_is_refused(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from gen.sink import ShardSink; "
         f"sink = ShardSink.open({str(tmp_path)!r}, {IDENTITY!r}, 'zstd'); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=f"another run is writing to it \\(pid {holder.pid} on"):
            open_sink(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    open_sink(tmp_path).close()  # the lock dies with its holder


def test_a_dir_of_another_spec_is_refused_naming_what_changed(tmp_path):
    open_sink(tmp_path, {"sampling": {"temperature": 0.7}, "model": "m"}).close()
    with pytest.raises(OutputError, match=r"different spec \(changed: sampling.temperature\)"):
        open_sink(tmp_path, {"sampling": {"temperature": 0.9}, "model": "m"})


def test_a_field_added_to_sdg_switched_off_resumes_runs_made_before_it(tmp_path):
    open_sink(tmp_path, {"sampling": {"temperature": 0.7}, "model": "m"}).close()
    open_sink(tmp_path, {"sampling": {"temperature": 0.7, "structured_outputs": None}, "model": "m",
                         "stages": [], "structured": False}).close()
    with pytest.raises(OutputError, match=r"different spec \(changed: sampling.structured_outputs\)"):
        open_sink(tmp_path, {"sampling": {"temperature": 0.7, "structured_outputs": {"choice": ["a"]}}, "model": "m"})


def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(OutputError, match=f"output.dir {blocker}/out: cannot write there"):
        open_sink(blocker / "out")
