"""`sdg filter`: the chain alone over an existing dataset, through the real CLI."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import ray

from tests.conftest import REPO
from tests.test_terminal import FOREIGN

ROWS = [
    {"instruction": "Name three primary colours used in painting.", "input": "", "output": "Red, yellow and blue are the three primary colours."},
    {"instruction": "Name three primary colours used in painting!", "input": "", "output": "Red, yellow and blue are the three primary colours."},
    {"instruction": "Describe the water cycle for a school report.", "input": "", "output": "Water evaporates from seas and lakes, condenses into clouds, falls as rain or snow and flows back to the sea."},
    {"instruction": "Draw a map of your town.", "input": "", "output": "I would start with the main street and the river."},
    {"instruction": "Translate the sentence into German.", "input": "I like tea.", "output": "Ich trinke gerne Tee, besonders am Morgen mit etwas Milch und Zucker."},
]


def test_sdg_filter_keeps_and_rejects_everything_and_resumes(tmp_path, sdg_env, ray_session):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "clean"
    command = [sys.executable, "-m", "gen.cli", "filter", str(data), "--spec", str(REPO / "examples" / "filter.yaml"),
               "--output", str(out), "--no-progress", "--no-report",
               "--set", "filter_workers.concurrency=1",  # five records: one worker process to start, not one per CPU
               "--address", ray.get_runtime_context().gcs_address]  # the session's Ray: none started twice
    first = subprocess.run(command, capture_output=True, text=True, env=sdg_env, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    # sdg's own lines only: Ray printed one of its driver's (core_worker.cc) for each worker it started
    assert not [line for line in (first.stdout + first.stderr).splitlines() if FOREIGN.search(line)], first.stderr
    kept = pq.read_table(out / "data").to_pylist()
    rejected = pq.read_table(out / "rejected").to_pylist()
    assert len(kept) + len(rejected) == len(ROWS)
    reasons = {r["messages"][0]["content"]: (r["drop_filter"], r["drop_reason"]) for r in rejected}
    assert reasons["Name three primary colours used in painting!"] == ("dedup", "exact_duplicate")
    # A user's instruction: Self-Instruct's rules (blacklisted "draw", "map") judge generated ones.
    assert "Draw a map of your town." in {r["messages"][0]["content"] for r in kept}
    assert reasons["Translate the sentence into German.\n\nI like tea."][0] == "language_id"
    assert all(r["lang"] == "en" for r in kept)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["records"] == len(ROWS)

    again = subprocess.run(command, capture_output=True, text=True, env=sdg_env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["records"] == len(ROWS) and manifest["this_run"]["resumed_from_shards"] == 1
