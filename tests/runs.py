"""What the end-to-end and fault tests share: a respond spec on the tiny model, its seeds, and the
comparison of an output with an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import TEST_ENGINE_ARGS

SPEC = f"""\
seeds:
  paths: [seeds.jsonl]
model:
  name: sdg/tiny-random-chat
  dtype: {TEST_ENGINE_ARGS['dtype']}
  max_model_len: {TEST_ENGINE_ARGS['max_model_len']}
  engine_args: {{kv_cache_memory_bytes: {TEST_ENGINE_ARGS['kv_cache_memory_bytes']}}}
  num_cpus_per_replica: 1  # runs that join the test session's Ray share its CPUs with its engines
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

# Reasons a record may be rejected for in these runs; anything else (stage_error, error) would be
# an infrastructure failure committed as a reject.
RECORD_REASONS = {"prompt_too_long", "near_duplicate", "exact_duplicate"}


def make_spec(tmp_path: Path, seeds: int, extra_lines=(), spec: str = SPEC) -> Path:
    with open(tmp_path / "seeds.jsonl", "w") as f:
        for i in range(seeds):
            f.write(json.dumps({"instruction": f"Explain topic number {i} in detail, please."}) + "\n")
        f.writelines(line + "\n" for line in extra_lines)
    (tmp_path / "spec.yaml").write_text(spec)
    return tmp_path / "spec.yaml"


def near_duplicate_pairs(tmp_path: Path, pairs: int, spec: str = SPEC) -> tuple[Path, list[set[str]]]:
    """A spec whose seeds are ``pairs`` distinct instructions, then a near-duplicate of each (one
    word added: Jaccard ~0.9), and the clusters of seed instructions dedup must keep one of."""
    import random

    rng = random.Random(7)
    vocabulary = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ro", "su", "ti") for b in
                  ("ba", "de", "fi", "go", "hu", "ja", "ke", "li", "mo", "ny")]
    bases = [" ".join(rng.choices(vocabulary, k=12)) + f" {i}" for i in range(pairs)]
    instructions = bases + [f"{base} please" for base in bases]
    with open(tmp_path / "seeds.jsonl", "w") as f:
        f.writelines(json.dumps({"instruction": text}) + "\n" for text in instructions)
    (tmp_path / "spec.yaml").write_text(spec)
    return tmp_path / "spec.yaml", [{base, f"{base} please"} for base in bases]


def kept_instructions(root: Path) -> list[str]:
    rows = pq.read_table(root / "data", columns=["messages"]).column("messages").to_pylist()
    return [messages[0]["content"] for messages in rows]


def assert_one_kept_per_cluster(root: Path, clusters: list[set[str]]) -> None:
    kept = Counter(kept_instructions(root))
    assert all(n == 1 for n in kept.values())
    assert [sum(kept[text] for text in cluster) for cluster in clusters] == [1] * len(clusters)


def ids_of(root: Path, kind: str) -> list[str]:
    files = sorted((root / kind).glob("part-*.parquet"))
    return [row for f in files for row in pq.read_table(f, columns=["id"]).column("id").to_pylist()]


def commits(root: Path) -> int:
    return len(list((root / "_commits").glob("*.json")))


def compare(output: Path, uninterrupted: Path) -> dict[str, int]:
    """What a faulted output lost, duplicated and wrongly rejected against an uninterrupted one.
    (Which member of a near-duplicate cluster is kept follows commit order, which timing decides:
    see :func:`assert_one_kept_per_cluster`.)"""
    kept, rejected = ids_of(output, "data"), ids_of(output, "rejected")
    everything = kept + rejected
    expected = set(ids_of(uninterrupted, "data")) | set(ids_of(uninterrupted, "rejected"))
    reasons = Counter(pq.read_table(output / "rejected", columns=["drop_reason"]).column("drop_reason").to_pylist()
                      ) if rejected else Counter()
    return {
        "lost": len(expected - set(everything)),
        "duplicated": len(everything) - len(set(everything)),
        "unexpected": len(set(everything) - expected),
        "wrongly_rejected": sum(n for reason, n in reasons.items() if reason not in RECORD_REASONS),
    }


def assert_same_records(output: Path, uninterrupted: Path) -> None:
    """0 lost, 0 duplicated, 0 infrastructure failures committed as rejects."""
    assert compare(output, uninterrupted) == {"lost": 0, "duplicated": 0, "unexpected": 0, "wrongly_rejected": 0}


def start_sdg_run(spec_path: Path, output: Path, env: dict[str, str], log: Path, *extra: str,
                  preexec_fn=None) -> subprocess.Popen:
    """A real `sdg run` in its own process group (so a test can signal it and all it started)."""
    return subprocess.Popen(
        [sys.executable, "-m", "gen.cli", "run", str(spec_path), "--set", f"output.dir={output}",
         "--no-progress", *extra], env=env, start_new_session=True, preexec_fn=preexec_fn,
        stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def wait_for_commits(output: Path, count: int, process=None, log: Path | None = None,
                     timeout_s: float = 400) -> None:
    deadline = time.monotonic() + timeout_s
    while commits(output) < count:
        if process is not None:
            assert process.poll() is None, log.read_text()[-3000:] if log else "the run exited"
        assert time.monotonic() < deadline, f"the run never committed {count} shards"
        time.sleep(0.05)


def own_processes(prefix: str) -> list:
    """Processes named ``prefix`` (``ray::EngineReplica``, ``VLLM::EngineCore``, ``ray::IndexShard``)
    among this process's descendants: the Ray this process started, not anybody else's on the
    machine."""
    import psutil

    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            command = process.cmdline()
            if process.name() == prefix or (command and command[0].startswith(prefix)):
                found.append(process)
        except psutil.NoSuchProcess:
            pass
    return found


def kill_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def run_stopped_by_ctrl_c_after_shard(spec, shard: int = 1) -> None:
    """``spec`` run in this process, interrupted by a SIGINT (Ctrl-C) once shard ``shard`` is
    committed; raises unless the run stops with :class:`gen.errors.Interrupted`."""
    import pytest

    from gen.errors import Interrupted
    from gen.run import run
    from gen.sink import ShardSink

    commit = ShardSink.commit

    def commit_then_ctrl_c(self, *args, **kwargs):
        entry = commit(self, *args, **kwargs)
        if entry["shard"] == shard:
            os.kill(os.getpid(), signal.SIGINT)
        return entry

    with pytest.MonkeyPatch.context() as patch, pytest.raises(Interrupted):
        patch.setattr(ShardSink, "commit", commit_then_ctrl_c)
        run(spec, progress=False, report=False)
