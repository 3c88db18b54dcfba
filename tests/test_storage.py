"""Outputs and seeds on an object store: the sink's rename-free commit protocol, its lease, seeds
read by URI, and a real run killed with -9 and resumed there. Against a local S3 server (moto,
started by the test), through pyarrow's own S3 client."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import ray

from gen.run import run
from gen.seeds import SeedReader
from gen.sink import OutputError, ShardSink
from gen.spec import load_spec
from gen.storage import Location, expand
from tests.conftest import REPO, TEST_ENGINE_ARGS
from tests.runs import assert_same_records, kill_group, start_sdg_run

IDENTITY = {"spec": 1}


def record(i):
    return {"id": f"r{i}", "work_key": f"w{i}", "messages": [{"role": "user", "content": f"q{i}"}],
            "prompt_tokens": 2, "completion_tokens": 3}


def objects(root: str) -> list[str]:
    """Every object under ``root``, relative to it."""
    location = Location.of(root)
    infos = location.fs.get_file_info(pafs.FileSelector(location.path, recursive=True, allow_not_found=True))
    return sorted(i.path[len(location.path) + 1:] for i in infos if i.type == pafs.FileType.File)


def test_a_commit_on_s3_writes_its_shards_then_its_journal_and_a_reopen_reads_them(s3_bucket):
    root = f"{s3_bucket}/out"
    sink = ShardSink.open(root, IDENTITY, "zstd")
    assert ".lock" in objects(root)  # the lease
    entry = sink.commit([record(1)], [record(2) | {"_drop": {"filter": "f", "reason": "r", "evidence": {}}}],
                        ["w1", "w2"], {"f": {"r": 1}})
    sink.close()
    assert objects(root) == sorted(["_commits/00000.json", entry["data"], entry["rejected"], "spec.json"])
    reopened = ShardSink.open(root, IDENTITY, "zstd")
    assert ("w1" in reopened.committed.keys, "w2" in reopened.committed.keys, reopened.next_shard) == (True, True, 1)
    assert [r["id"] for r in reopened.committed.records(["id"])] == ["r1", "r2"]
    assert reopened.totals()["dropped"] == {"f": {"r": 1}}
    reopened.close()


def test_uncommitted_objects_are_deleted_on_open_and_committed_ones_kept(s3_bucket):
    root = f"{s3_bucket}/out"
    sink = ShardSink.open(root, IDENTITY, "zstd")
    committed = sink.commit([record(1)], [], ["w1"], {})
    sink.close()
    # a run that died after writing its next shard, before its journal entry (the commit point)
    Location.of(root).child("data", "part-00001-0badf00d.parquet").write_bytes(b"half of a shard")
    recovered = ShardSink.open(root, IDENTITY, "zstd")
    assert [name for name in objects(root) if name.startswith("data/")] == [committed["data"]]
    assert "w1" in recovered.committed.keys and recovered.next_shard == 1
    recovered.close()


def test_a_damaged_shard_on_s3_sets_its_commit_aside(s3_bucket):
    root = f"{s3_bucket}/out"
    sink = ShardSink.open(root, IDENTITY, "zstd")
    sink.commit([record(1)], [], ["w1"], {})
    damaged = sink.commit([record(2)], [], ["w2"], {})["data"]
    sink.close()
    shard = Location.of(root).child(damaged)
    shard.write_bytes(shard.read_bytes()[:-10])  # a bad copy: shorter than the journal says
    recovered = ShardSink.open(root, IDENTITY, "zstd")
    assert ("w1" in recovered.committed.keys, "w2" in recovered.committed.keys) == (True, False)
    assert [n for n in objects(root) if n.startswith("_quarantine/")] == [
        "_quarantine/00001/_commits-00001.json", f"_quarantine/00001/{damaged.replace('/', '-')}"]
    recovered.close()


HOLDER = ("import sys, time; from gen.sink import ShardSink; "
          "sink = ShardSink.open({root!r}, {identity!r}, 'zstd'); print('locked', flush=True); time.sleep(120)")


def test_a_second_writer_is_refused_while_the_lease_is_held_and_takes_over_from_a_killed_one(s3_bucket):
    root = f"{s3_bucket}/out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=root, identity=IDENTITY)],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=f"another run is writing to it \\(pid {holder.pid} on"):
            ShardSink.open(root, IDENTITY, "zstd")
    finally:
        holder.kill()
        holder.wait()
    # kill -9 left its lease behind; its holder is a dead process on this host: no wait for expiry
    sink = ShardSink.open(root, IDENTITY, "zstd")
    assert json.loads(Location.of(root).child(".lock").read_bytes())["owner"] == sink.writer
    sink.close()
    assert ".lock" not in objects(root)


def test_a_lease_held_on_another_host_is_honoured_until_it_expires(s3_bucket):
    root = f"{s3_bucket}/out"
    lease = Location.of(root).child(".lock")
    holder = {"owner": "elsewhere", "pid": 1, "host": "another-node"}
    lease.write_bytes(json.dumps({**holder, "renewed_at": time.time() - 10}).encode())
    with pytest.raises(OutputError, match=r"another run is writing to it \(pid 1 on another-node, lease renewed 10 s ago\)"):
        ShardSink.open(root, IDENTITY, "zstd")
    lease.write_bytes(json.dumps({**holder, "renewed_at": time.time() - 600}).encode())
    ShardSink.open(root, IDENTITY, "zstd").close()


def test_a_writer_that_lost_its_lease_stops_before_its_commit_point(s3_bucket):
    root = f"{s3_bucket}/out"
    sink = ShardSink.open(root, IDENTITY, "zstd")
    sink.commit([record(1)], [], ["w1"], {})
    # another writer took the directory over while this one was paused past its lease
    Location.of(root).child(".lock").write_bytes(json.dumps(
        {"owner": "new", "pid": 7, "host": "another-node", "renewed_at": time.time()}).encode())
    with pytest.raises(OutputError, match="lost its lease"):
        sink.commit([record(2)], [], ["w2"], {})
    assert [n for n in objects(root) if n.startswith("_commits/")] == ["_commits/00000.json"]
    sink.close()
    assert ".lock" in objects(root)  # the new holder's lease is left alone


def test_seeds_stream_from_s3_by_uri_and_glob_as_they_read_locally(s3_bucket, tmp_path):
    lines = [json.dumps({"instruction": f"Task {i}", "output": "done"}) for i in range(5)]
    (tmp_path / "a.jsonl").write_text("\n".join(lines[:3]) + "\n")
    pq.write_table(pa.table({"instruction": [f"Task {i}" for i in range(3, 5)], "output": ["done"] * 2}),
                   tmp_path / "b.parquet")
    for name in ("a.jsonl", "b.parquet"):
        Location.of(f"{s3_bucket}/seeds/{name}").write_bytes((tmp_path / name).read_bytes())
    Location.of(f"{s3_bucket}/seeds/nested/c.jsonl").write_bytes(lines[0].encode())

    assert [str(f) for f in expand(f"{s3_bucket}/seeds/*")] == [f"{s3_bucket}/seeds/a.jsonl",
                                                                 f"{s3_bucket}/seeds/b.parquet"]
    assert len(expand(f"{s3_bucket}/seeds/**/*.jsonl")) == 2
    remote_reader = SeedReader([f"{s3_bucket}/seeds/*.jsonl", f"{s3_bucket}/seeds/b.parquet"])
    remote = list(remote_reader)
    local = list(SeedReader([str(tmp_path / "a.jsonl"), str(tmp_path / "b.parquet")]))
    assert [r["id"] for r in remote] == [r["id"] for r in local] and len(remote) == 5
    assert remote_reader.count_rows() == 5  # the Parquet file's from its footer, read by range
    assert remote[0]["metadata"]["seed_source"] == f"{s3_bucket}/seeds/a.jsonl:1"

    # A spec naming seeds by URI keeps the URI, and its identity is the seeds' content, wherever they are.
    spec_text = "seeds: {paths: [%s]}\nstages: []\noutput: {dir: out}\n"
    (tmp_path / "remote.yaml").write_text(spec_text % f"{s3_bucket}/seeds/a.jsonl")
    (tmp_path / "local.yaml").write_text(spec_text % "a.jsonl")
    remote_spec, local_spec = load_spec(tmp_path / "remote.yaml"), load_spec(tmp_path / "local.yaml")
    assert remote_spec.seeds.paths == [f"{s3_bucket}/seeds/a.jsonl"]
    assert remote_spec.identity() == local_spec.identity()


def quickstart_on_tiny_model(seeds: str) -> list[str]:
    """examples/quickstart.yaml on the tiny model, its 32 seeds read from ``seeds``, 4 records a shard."""
    engine_args = {"kv_cache_memory_bytes": TEST_ENGINE_ARGS["kv_cache_memory_bytes"], "enforce_eager": True}
    return ["model.name=sdg/tiny-random-chat", f"model.dtype={TEST_ENGINE_ARGS['dtype']}",
            f"model.max_model_len={TEST_ENGINE_ARGS['max_model_len']}", f"model.engine_args={json.dumps(engine_args)}",
            f"seeds.paths=[{seeds}]", "output.rows_per_shard=4", "output.commit_interval_s=1",
            "model.num_cpus_per_replica=1"]  # the run joins the test session's Ray, beside its engines


def test_quickstart_on_s3_killed_after_its_first_commit_resumes_with_nothing_lost_or_twice(
        tmp_path, s3_server, s3_bucket, engine_pool, sdg_env, ray_session):
    quickstart = REPO / "examples" / "quickstart.yaml"
    seeds = f"{s3_bucket}/seeds/seeds.jsonl"
    Location.of(seeds).write_bytes((REPO / "examples" / "seeds.jsonl").read_bytes())
    overrides = quickstart_on_tiny_model(seeds)
    reference = tmp_path / "reference"
    run(load_spec(quickstart, [*overrides, f"output.dir={reference}"]), engine=engine_pool, progress=False, report=False)
    shards_whole_run = len(list((reference / "_commits").glob("*.json")))

    output, log = f"{s3_bucket}/out", tmp_path / "run.log"
    journals = Location.of(output).child("_commits")
    # Two requests in flight, so the tiny engine is still working when the first shard commits.
    process = start_sdg_run(quickstart, output, {**sdg_env, **s3_server}, log,
                            "--address", ray.get_runtime_context().gcs_address,
                            "--set", "model.max_in_flight_per_replica=2",
                            *[arg for override in overrides for arg in ("--set", override)])
    try:
        deadline = time.monotonic() + 400
        while not journals.files(".json"):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never committed a shard"
            time.sleep(0.05)
    finally:
        kill_group(process, signal.SIGKILL)
        process.wait()
    committed_at_kill = len(journals.files(".json"))
    assert 0 < committed_at_kill < shards_whole_run, "the kill must land mid-run"

    resumed = run(load_spec(quickstart, [*overrides, f"output.dir={output}"]), engine=engine_pool, progress=False, report=False)
    assert resumed["status"] == "complete"
    assert resumed["this_run"]["resumed_from_shards"] == committed_at_kill
    assert resumed["this_run"]["completion_tokens"] > 0  # the rest was made by the resumed run
    named = {path for entry in resumed["shards"] for path in [entry["path"]]}
    assert {n for n in objects(output) if n.startswith(("data/", "rejected/"))} == named  # nothing uncommitted left
    assert ".lock" not in objects(output)

    copy = tmp_path / "copy"
    location = Location.of(output)
    pafs.copy_files(location.path, str(copy), source_filesystem=location.fs)
    assert_same_records(copy, reference)
    assert resumed["totals"]["work_items"] == 32


def test_an_output_in_a_bucket_that_does_not_exist_is_a_clear_error(s3_server):
    with pytest.raises(OutputError, match="output.dir s3://no-such-bucket/out: cannot write there: .*no-such-bucket"):
        ShardSink.open("s3://no-such-bucket/out", IDENTITY, "zstd")


def test_a_submitted_job_ships_local_seed_files_not_uris(tmp_path):
    from cluster.jobs import _relative_input_files

    (tmp_path / "local.jsonl").write_text('{"instruction": "x"}\n')
    (tmp_path / "spec.yaml").write_text("seeds: {paths: [local.jsonl, 's3://bucket/seeds/*.jsonl']}\n"
                                        "stages: []\noutput: {dir: 's3://bucket/out'}\n")
    assert _relative_input_files(tmp_path / "spec.yaml") == [tmp_path / "local.jsonl"]


def test_a_scheme_pyarrow_has_no_filesystem_for_goes_through_fsspec():
    root = f"memory://sdg-test-{time.time_ns()}/out"  # fsspec's in-memory filesystem
    sink = ShardSink.open(root, IDENTITY, "zstd")
    entry = sink.commit([record(1)], [], ["w1"], {})
    sink.close()
    reopened = ShardSink.open(root, IDENTITY, "zstd")
    assert [r["id"] for r in reopened.committed.records(["id"])] == ["r1"] and "w1" in reopened.committed.keys
    assert entry["data"] in objects(root)
    reopened.close()


def test_the_report_and_card_of_an_output_on_s3_are_written_there(s3_bucket):
    from gen.report import write_report

    root = f"{s3_bucket}/out"
    sink = ShardSink.open(root, IDENTITY, "zstd")
    sink.commit([record(1), record(3)], [record(2) | {"_drop": {"filter": "f", "reason": "r", "evidence": {}}}],
                ["w1", "w2", "w3"], {"f": {"r": 1}})
    sink.write_manifest({"status": "complete", "totals": sink.totals(), "seeds": {"read": 3}})
    sink.close()
    line = {"run": "A", "t": time.time(), "replica": 0, "completion_tokens": 9, "in_flight": 1, "retried": 0}
    Location.of(root).child("timeline.jsonl").write_bytes((json.dumps(line) + "\n").encode())
    page = write_report(root)
    assert str(page) == f"{root}/report.html"
    written = objects(root)
    assert {"report.html", "README.md", "report/funnel.png", "report/engine.png"} <= set(written)
    card = Location.of(root).child("README.md").read_bytes().decode()
    assert "split: data" in card and "split: rejected" in card
    assert '<section id="funnel">' in Location.of(root).child("report.html").read_bytes().decode()


def test_the_time_series_of_a_run_on_s3_is_written_whole_at_its_end_after_an_earlier_runs(s3_bucket):
    """An object cannot be appended to: each run writes the earlier runs' lines and its own."""
    from gen.telemetry import Telemetry, read_timeline

    class Engine:  # what Telemetry samples of the engine pool
        replicas, completion_tokens_by_replica, failures_by_replica = [None], [5], [0]

        def in_flight(self):
            return [2]

    root = Location.of(f"{s3_bucket}/out")
    root.child("timeline.jsonl").write_bytes(b'{"run": "A", "t": 1.0, "replica": 0}\n')
    telemetry = Telemetry(root, {"m": Engine()})
    telemetry.sample()
    assert [line["run"] for line in read_timeline(root)] == ["A"]  # nothing written while it runs
    telemetry.close()
    lines = list(read_timeline(root))
    assert [line["run"] for line in lines] == ["A", telemetry.run]
    assert (lines[1]["completion_tokens"], lines[1]["in_flight"]) == (5, 2)
