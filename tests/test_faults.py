"""Fault injection on real Ray and real vLLM (CPU), the way real clusters fail.

Every test proves its fault hit work in flight, compares the output with an uninterrupted run
(0 lost, 0 duplicated, 0 infrastructure failures committed as rejects, one record kept per
near-duplicate cluster), and leaves nothing behind: faults that break an engine use an engine of
their own, never the session's shared one; processes a test starts are gone when it ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import ray

from cluster.engine import EngineLimits, start_replicas
from gen.run import run
from gen.spec import load_spec
from tests.conftest import REPO, TEST_ENGINE_ARGS
from tests.runs import (
    SPEC,
    assert_one_kept_per_cluster,
    assert_same_records,
    commits,
    kill_group,
    near_duplicate_pairs,
    own_processes,
    start_sdg_run,
    wait_for_commits,
)

PAIRS = 300  # 600 seeds: 300 distinct instructions and a near-duplicate of each


def start_own_engine(tiny_model_path):
    """A replica for the faults that break engines; a short stall timeout for the hung-engine test
    (long enough that a merely slow engine on a busy 2-core machine is not taken for hung)."""
    return start_replicas({"model": str(tiny_model_path), **TEST_ENGINE_ARGS}, replicas=1,
                          tensor_parallel_size=1, max_in_flight_per_replica=64, num_cpus_per_replica=1,
                          limits=EngineLimits(stall_timeout_s=30, startup_timeout_s=600))


@pytest.fixture(scope="module")
def own_engine(ray_session, tiny_model_path):
    """A CPU replica as sdg starts it: vLLM's engine runs inside the replica's process."""
    pool = start_own_engine(tiny_model_path)
    yield pool
    pool.shutdown()


@pytest.fixture
def own_engine_with_core_process(ray_session, tiny_model_path, monkeypatch):
    """A replica laid out as on a GPU: vLLM's engine core in a process of its own, which can die
    while the replica lives."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    pool = start_own_engine(tiny_model_path)
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, engine_pool):
    """The uninterrupted run every faulted run is compared with."""
    root = tmp_path_factory.mktemp("reference")
    spec_path, clusters = near_duplicate_pairs(root, PAIRS)
    run(load_spec(spec_path, [f"output.dir={root / 'out'}"]), engine=engine_pool, progress=False, report=False)
    return root / "out", clusters


def faulted(tmp_path: Path, fault, engine, *overrides: str):
    """Run the pairs spec in a thread; once the first shard is committed, call ``fault()``.
    Returns the run's manifest (or raises its error) after it ends."""
    spec_path, clusters = near_duplicate_pairs(tmp_path, PAIRS)
    output = tmp_path / "out"
    spec = load_spec(spec_path, [f"output.dir={output}", *overrides])
    result: dict = {}

    def go():
        try:
            result["manifest"] = run(spec, engine=engine, progress=False, report=False)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            result["error"] = exc

    runner = threading.Thread(target=go)
    runner.start()
    wait_for_commits(output, 1, timeout_s=300)
    assert runner.is_alive(), "the run finished before the fault"
    fault()
    runner.join(timeout=900)
    assert not runner.is_alive(), "the run hung after the fault"
    if "error" in result:
        raise result["error"]
    return result["manifest"], output, clusters


def replica_process(pool) -> psutil.Process:
    pid = ray.get(pool.replicas[0].__ray_call__.remote(lambda replica: os.getpid()))
    return psutil.Process(pid)


def engine_core_of(pool) -> psutil.Process:
    cores = [p for p in replica_process(pool).children(recursive=True) if "EngineCore" in p.name()]
    assert len(cores) == 1, cores
    return cores[0]


def test_engine_core_killed_in_a_live_replica_is_retried_not_rejected(tmp_path, own_engine_with_core_process,
                                                                       reference):
    """vLLM's EngineDeadError inside a live actor: the replica restarts, its requests go again."""
    engine = own_engine_with_core_process
    killed = []

    def kill_engine_core():
        assert engine._in_flight[0] > 0, "the fault must hit requests in flight"
        killed.append(engine_core_of(engine))
        killed[0].send_signal(signal.SIGKILL)

    manifest, output, clusters = faulted(tmp_path, kill_engine_core, engine)
    assert manifest["this_run"]["infrastructure_failures"] > 0
    assert_same_records(output, reference[0])
    assert_one_kept_per_cluster(output, clusters)
    assert engine_core_of(engine).pid != killed[0].pid  # the replica came back with a new engine


def test_hung_engine_is_killed_after_the_stall_timeout_and_its_requests_retried(tmp_path, own_engine, reference):
    frozen = []

    def freeze_engine():
        assert own_engine._in_flight[0] > 0
        frozen.append(replica_process(own_engine))
        frozen[0].send_signal(signal.SIGSTOP)  # as a GPU hung on a CUDA OOM: alive, silent

    try:
        manifest, output, clusters = faulted(tmp_path, freeze_engine, own_engine)
    finally:
        for process in frozen:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)  # if the stall timeout's kill did not end it
    assert manifest["this_run"]["infrastructure_failures"] > 0
    assert replica_process(own_engine).pid != frozen[0].pid  # Ray restarted the killed replica
    assert_same_records(output, reference[0])
    assert_one_kept_per_cluster(output, clusters)


@pytest.mark.parametrize("fault", ["killed", "frozen"])
def test_lost_dedup_index_actor_is_rebuilt_from_the_committed_shards(tmp_path, engine_pool, reference, fault):
    """Nothing slips through: a rebuilt index still knows every committed record."""
    hit: list[psutil.Process] = []

    def lose_an_index_shard():
        shard = own_processes("ray::IndexShard")[0]
        hit.append(shard)
        shard.send_signal(signal.SIGKILL if fault == "killed" else signal.SIGSTOP)

    try:
        manifest, output, clusters = faulted(tmp_path, lose_an_index_shard, engine_pool,
                                             "filters.0.index_timeout_s=5")
    finally:
        for process in hit:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
    assert manifest["totals"]["dropped"]["dedup"]["near_duplicate"] == PAIRS
    assert_same_records(output, reference[0])
    assert_one_kept_per_cluster(output, clusters)
    deadline = time.monotonic() + 30
    while own_processes("ray::IndexShard"):  # the index actors end with the run
        assert time.monotonic() < deadline, own_processes("ray::IndexShard")
        time.sleep(0.5)


def alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def test_sigterm_commits_what_is_complete_exits_saying_how_to_resume_and_leaves_no_process(
        tmp_path, engine_pool, sdg_env, reference):
    spec_path, clusters = near_duplicate_pairs(tmp_path, PAIRS)
    output, log = tmp_path / "out", tmp_path / "run.log"
    # No grace: the tiny model would finish everything in flight within any grace period.
    process = start_sdg_run(spec_path, output, sdg_env, log, "--set", "failures.grace_period_s=0")
    try:
        wait_for_commits(output, 1, process, log)
        started = descendants(process.pid)  # the embedded Ray and the engine it started
        assert any("raylet" in p.name() for p in started)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
        text = log.read_text()
        assert code == 128 + signal.SIGTERM, text[-3000:]
        assert "same command resumes it" in text and "stopped by SIGTERM" in text
        assert "Stack trace" not in text and "*** SIGTERM" not in text  # no C++ abort
        time.sleep(5)
        assert [p for p in started if alive(p)] == []
        manifest = json.loads((output / "manifest.json").read_text())
        assert manifest["status"] == "interrupted"
        assert 0 < manifest["totals"]["work_items"] < 2 * PAIRS
    finally:
        kill_group(process, signal.SIGKILL)
    resumed = run(load_spec(spec_path, [f"output.dir={output}"]), engine=engine_pool, progress=False, report=False)
    assert resumed["status"] == "complete"
    assert_same_records(output, reference[0])
    assert_one_kept_per_cluster(output, clusters)


def test_driver_killed_at_random_points_resumes_with_nothing_lost_or_duplicated(
        tmp_path, engine_pool, sdg_env, reference, ray_session):
    """kill -9 of the driver, twice at random moments, resumed each time, then finished (chaos.py
    kills it many more times in one long run)."""
    seed = random.randrange(1 << 30)
    print(f"kill points drawn with random.Random({seed})")
    rng = random.Random(seed)
    spec_path, clusters = near_duplicate_pairs(tmp_path, PAIRS)
    output = tmp_path / "out"
    # The subprocesses join this session's cluster: a kill leaves no Ray of theirs behind.
    address = ray.get_runtime_context().gcs_address
    shards_before: dict[str, bytes] = {}
    for kill in range(2):
        log = tmp_path / f"run{kill}.log"
        # Four requests in flight: the tiny engine would otherwise finish all 600 before a kill.
        process = start_sdg_run(spec_path, output, sdg_env, log, "--address", address,
                                "--set", "model.max_in_flight_per_replica=4")
        try:
            wait_for_commits(output, commits(output) + 1, process, log)
            time.sleep(rng.uniform(0, 1.5))
        finally:
            kill_group(process, signal.SIGKILL)
            process.wait()
        # Only shards a journal names are committed: a kill between a shard's write and its
        # journal leaves an orphan, which the resume removes and writes again.
        for journal in (output / "_commits").glob("*.json"):
            for name in json.loads(journal.read_text())["files"]:
                if name not in shards_before:  # read once: the second kill finds the first's shards again
                    shards_before[name] = (output / name).read_bytes()
    assert 0 < sum(1 for _ in (output / "_commits").glob("*.json"))
    resumed = run(load_spec(spec_path, [f"output.dir={output}"]), engine=engine_pool, progress=False, report=False)
    assert resumed["this_run"]["resumed_from_shards"] >= 2
    assert_same_records(output, reference[0])
    assert_one_kept_per_cluster(output, clusters)
    for name, content in shards_before.items():  # committed shards were kept as they were
        assert (output / name).read_bytes() == content


def test_a_failing_shard_write_stops_generation_at_once_and_the_run_resumes(tmp_path, engine_pool, sdg_env,
                                                                            ray_session):
    """RLIMIT_FSIZE makes the driver's writes past 256 kB fail (EFBIG), as a full disk would: the
    small shards commit, the big one fails, the run stops then, not after generating everything."""
    rng = random.Random(3)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(SPEC.replace("filters:\n  - type: dedup\n", "filters: []\n"))
    with open(tmp_path / "seeds.jsonl", "w") as f:
        for i in range(400):
            f.write(json.dumps({"instruction": f"Explain topic number {i} in detail, please."}) + "\n")
        for i in range(60):  # too long for the model: rejected at once, with ~15 kB of random text each
            words = " ".join("".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=7)) for _ in range(2000))
            f.write(json.dumps({"instruction": words}) + "\n")
        for i in range(400, 800):
            f.write(json.dumps({"instruction": f"Explain topic number {i} in detail, please."}) + "\n")
    output, log = tmp_path / "out", tmp_path / "run.log"

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, resource.RLIM_INFINITY))

    # Few requests in flight, so the seeds are worked on roughly in file order.
    process = start_sdg_run(spec_path, output, sdg_env, log, "--address", ray.get_runtime_context().gcs_address,
                            "--set", "model.max_in_flight_per_replica=8", preexec_fn=limit_file_size)
    code = process.wait(timeout=600)
    text = log.read_text()
    assert code == 1, text[-3000:]
    assert "a commit failed" in text and "same command resumes it" in text
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    committed = manifest["totals"]["work_items"]
    assert 0 < committed < 860
    # stopped at the failure: far from every seed was generated
    assert manifest["this_run"]["completion_tokens"] < 800 * 48
    resumed = run(load_spec(spec_path, [f"output.dir={output}"]), engine=engine_pool, progress=False, report=False)
    assert resumed["totals"]["work_items"] == 860 == resumed["totals"]["records"]
    assert resumed["totals"]["dropped"] == {"respond": {"prompt_too_long": 60}}


def test_a_truncated_shard_found_on_resume_is_set_aside_and_its_work_made_again(tmp_path, engine_pool, reference):
    output = tmp_path / "out"
    shutil.copytree(reference[0], output)
    damaged = next((output / "data").glob("part-00002-*.parquet"))
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    spec_path, clusters = near_duplicate_pairs(tmp_path, PAIRS)
    resumed = run(load_spec(spec_path, [f"output.dir={output}"]), engine=engine_pool, progress=False, report=False)
    assert (output / "_quarantine" / "00002").is_dir()
    assert resumed["this_run"]["completion_tokens"] > 0  # the set-aside work items were made again
    assert_same_records(output, reference[0])
    assert_one_kept_per_cluster(output, clusters)
    for path in (output / "data").glob("part-*.parquet"):
        pq.read_table(path)  # every shard in the output reads


NODE_LOSS_SCRIPT = """
import json, sys, threading, time
sys.path.insert(0, {repo!r})
import ray
from ray.cluster_utils import Cluster
from gen.run import run, start_engine
from gen.spec import load_spec
from pathlib import Path
from tests.runs import commits

cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 0}})
nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
cluster.wait_for_nodes()
ray.init(address=cluster.address)
spec = load_spec({spec!r}, ["output.dir={output}", "model.replicas=2"])
engine = start_engine(spec)
def node_of(replica):
    # the run can finish on the other replica while this one is still restarting
    for _ in range(600):
        try:
            return ray.get(replica.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id()))
        except ray.exceptions.ActorUnavailableError:
            time.sleep(1)
nodes_of = lambda: [node_of(r) for r in engine.replicas]
before = nodes_of()
result = {{}}
runner = threading.Thread(target=lambda: result.update(run(spec, engine=engine, progress=False, report=False)))
runner.start()
while not commits(Path("{output}")):
    time.sleep(0.05)
cluster.remove_node(next(n for n in nodes if n.node_id == before[0]))
runner.join()
print("RESULT " + json.dumps({{"nodes_before": before, "nodes_after": nodes_of(), "removed": before[0],
                              "this_run": result["this_run"]}}))
engine.shutdown()
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.multinode
def test_a_node_removed_mid_run_moves_its_replica_and_loses_nothing(tmp_path, engine_pool, reference, sdg_env):
    """A three-node cluster (ray.cluster_utils.Cluster, in its own process) with two replicas,
    spread over two raylets; the node of one goes away after the first commit; Ray restarts that
    replica on the third node."""
    import subprocess

    spec_path, clusters = near_duplicate_pairs(tmp_path, PAIRS)
    output = tmp_path / "out"
    script = tmp_path / "node_loss.py"
    script.write_text(NODE_LOSS_SCRIPT.format(repo=str(REPO), spec=str(spec_path), output=str(output)))
    env = {k: v for k, v in sdg_env.items() if k not in ("RAY_ADDRESS",)}
    finished = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                              timeout=900, start_new_session=True)
    lines = [line for line in finished.stdout.splitlines() if line.startswith("RESULT ")]
    assert finished.returncode == 0 and lines, finished.stderr[-4000:]
    result = json.loads(lines[0].removeprefix("RESULT "))
    before, after, removed = result["nodes_before"], result["nodes_after"], result["removed"]
    assert len(set(before)) == 2 and len(set(after)) == 2  # one replica per raylet, before and after
    assert removed in before and removed not in after
    # The manifest says where each replica started, as Ray does.
    replicas = result["this_run"]["replicas_by_model"]["sdg/tiny-random-chat"]
    assert [replica["placements"][0]["node_id"] for replica in replicas] == before
    assert result["this_run"]["infrastructure_failures"] > 0
    assert_same_records(output, reference[0])
    assert_one_kept_per_cluster(output, clusters)
