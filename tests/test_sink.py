import json
import os
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
    assert entry["data"] == "data/part-00000.parquet" and entry["rejected"] == "rejected/part-00000.parquet"
    row = pq.read_table(tmp_path / "rejected/part-00000.parquet").to_pylist()[0]
    assert (row["drop_filter"], row["drop_reason"]) == ("dedup", "near_duplicate")
    assert json.loads(row["drop_evidence"]) == {"duplicate_of": "r1", "similarity": 0.9}
    totals = sink.totals()
    assert (totals["kept"], totals["rejected"], totals["prompt_tokens"], totals["completion_tokens"]) == (1, 1, 4, 6)
    assert totals["dropped"] == {"dedup": {"near_duplicate": 1}}
    sink.close()
    reopened = open_sink(tmp_path)
    assert reopened.committed.keys == {"w1", "w2"} and reopened.next_shard == 1


def test_recovery_finishes_committed_renames_and_drops_uncommitted_files(tmp_path):
    sink = open_sink(tmp_path)
    sink.commit([record(1)], [], ["w1"], {})
    sink.close()
    # a crash after the journal entry but before the rename
    os.replace(tmp_path / "data/part-00000.parquet", tmp_path / "data/.part-00000.parquet.tmp")
    # and a crash of a later commit before its journal entry
    (tmp_path / "data/.part-00001.parquet.tmp").write_bytes(b"half written")
    recovered = open_sink(tmp_path)
    assert (tmp_path / "data/part-00000.parquet").exists()
    assert not list((tmp_path / "data").glob(".*.tmp"))
    assert recovered.committed.keys == {"w1"} and recovered.next_shard == 1
    assert [r["id"] for r in recovered.committed.records(["id"])] == ["r1"]


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


def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(OutputError, match=f"output.dir {blocker}/out: cannot write there"):
        open_sink(blocker / "out")
