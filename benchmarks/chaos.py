"""Many injected faults over one long run; then the output is compared with an uninterrupted run.

    .venv/bin/python benchmarks/chaos.py [--faults 20] [--pairs 15000] [--seed N]

A local Ray cluster is started here; `sdg run` processes join it and are resumed after every fault
that ends them. Faults, drawn at random every few seconds once a run has committed:

* ``driver_kill``: kill -9 of the `sdg run` process;
* ``driver_sigterm``: SIGTERM (graceful stop), as `ray job stop` or a preemption notice;
* ``engine_core_kill``: kill -9 of the process that runs a replica's vLLM engine core: the replica
  itself on CPU (Ray restarts it), vLLM's EngineCore process where it has one (EngineDeadError in a
  live actor);
* ``engine_freeze``: SIGSTOP of that process (a hung GPU); the stall timeout must catch it;
* ``index_kill`` / ``index_freeze``: kill -9 or SIGSTOP of a dedup index actor.

Prints ``faults injected: N, lost: 0, duplicated: 0, wrongly rejected: 0`` and the breakdown, and
saves benchmarks/results/chaos.json.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.runs import (  # noqa: E402
    SPEC,
    assert_one_kept_per_cluster,
    commits,
    compare,
    near_duplicate_pairs,
    own_processes,
)

FAULTS = ("driver_kill", "driver_sigterm", "engine_core_kill", "engine_freeze", "index_kill", "index_freeze")
# Short timeouts so frozen processes are noticed within the benchmark's pace.
OVERRIDES = ["--set", "failures.stall_timeout_s=30", "--set", "failures.grace_period_s=3",
             "--set", "filters.0.index_timeout_s=5", "--set", "sampling.max_tokens=32"]


def start(spec: Path, output: Path, address: str, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gen.cli", "run", str(spec), "--set", f"output.dir={output}",
                             "--address", address, "--no-progress", *OVERRIDES],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)


def inject(fault: str, driver: subprocess.Popen, frozen: list[psutil.Process]) -> bool:
    """Inject ``fault``; False when its target is not there right now (e.g. an engine restarting)."""
    if fault in ("driver_kill", "driver_sigterm"):
        driver.send_signal(signal.SIGKILL if fault == "driver_kill" else signal.SIGTERM)
        return True
    if fault.startswith("engine"):
        targets = own_processes("VLLM::EngineCore") or own_processes("ray::EngineReplica")
    else:
        targets = own_processes("ray::IndexShard")
    targets = [p for p in targets if p.status() != psutil.STATUS_STOPPED]
    if not targets:
        return False
    target = random.choice(targets)
    if fault.endswith("kill"):
        target.send_signal(signal.SIGKILL)
    else:
        target.send_signal(signal.SIGSTOP)
        frozen.append(target)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faults", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=15000,
                        help="distinct instructions (each with a near-duplicate); the run must outlast the faults")
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 30))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    random.seed(args.seed)

    import ray

    from cluster.ray_cluster import connect

    connect(None, num_cpus=4)
    address = ray.get_runtime_context().gcs_address
    work = Path(tempfile.mkdtemp(prefix="sdg-chaos-"))
    spec, clusters = near_duplicate_pairs(work, args.pairs, SPEC.replace("rows_per_shard: 50", "rows_per_shard: 200"))
    output, reference = work / "chaos", work / "reference"
    injected: Counter[str] = Counter()
    frozen: list[psutil.Process] = []
    starts = 0
    started_at = time.monotonic()
    with open(work / "runs.log", "w") as log:
        while True:
            committed = commits(output)
            driver = start(spec, output, address, log)
            starts += 1
            # Faults only once this run committed: its engine and index actors are up, so every
            # kind of fault has a target (before, only the driver has one).
            while driver.poll() is None and commits(output) == committed:
                time.sleep(0.1)
            while driver.poll() is None and sum(injected.values()) < args.faults:
                time.sleep(rng.uniform(2, 6))
                if driver.poll() is not None:
                    break
                fault = rng.choice(FAULTS)
                if inject(fault, driver, frozen):
                    injected[fault] += 1
                    print(f"[{time.monotonic() - started_at:6.0f} s] {fault} ({sum(injected.values())})", flush=True)
                if fault in ("driver_kill", "driver_sigterm"):
                    break
            code = driver.wait()
            for process in frozen:  # what a killed replica or index actor left stopped
                if process.is_running():
                    process.send_signal(signal.SIGKILL)
            frozen.clear()
            if code == 0:
                break
    chaos_s = time.monotonic() - started_at
    subprocess.run([sys.executable, "-m", "gen.cli", "run", str(spec), "--set", f"output.dir={reference}",
                    "--address", address, "--no-progress", *OVERRIDES], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = compare(output, reference)
    assert_one_kept_per_cluster(output, clusters)
    manifest = json.loads((output / "manifest.json").read_text())
    print(f"faults injected: {sum(injected.values())}, lost: {result['lost']}, duplicated: {result['duplicated']}, "
          f"wrongly rejected: {result['wrongly_rejected']}")
    print(f"  by kind: {dict(injected)}; sdg run started {starts} times; {chaos_s:.0f} s; "
          f"records {manifest['totals']['records']}, kept {manifest['totals']['kept']} "
          f"(one per near-duplicate cluster: yes); seed {args.seed}")
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "chaos.json").write_text(json.dumps({
        "faults_injected": sum(injected.values()), "by_kind": dict(injected), **result, "runs_started": starts,
        "seconds": round(chaos_s), "records": manifest["totals"]["records"], "seed": args.seed,
    }, indent=2))
    ray.shutdown()
    if any(result.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
