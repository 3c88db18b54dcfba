"""`sdg filter` across a Ray cluster: records/s with 1, 2 and 4 worker processes.

A synthetic Alpaca corpus (``tests/filter_corpus.py``: English instructions and answers, with
near-duplicates, exact repeats, degenerate answers and answers in other languages mixed in) is
written as Parquet to a temp dir, then filtered by ``examples/filter.yaml``'s chain (the rule
filters, language_id, dedup) with ``filter_workers.concurrency`` = each of ``--workers``, on one
``ray.cluster_utils.Cluster`` (``--nodes`` x ``--cpus-per-node`` declared CPUs, plus a head node
with none), each run a fresh ``sdg filter --address`` process. Beside them, in the same run, the
``sdg filter`` of ``--baseline`` (a revision before the workers: the whole chain in the driver).

Per run: records/s over the run's own wall time (``manifest.json``'s ``this_run.wall_s``, from
joining the cluster to the last commit: interpreter start-up and imports excluded), the driver's
CPU seconds, the kept records (every run must keep the same), and the ratios to 1 worker and to
the driver-only path.

Then the Ray Data part alone, in this process on the same cluster (``--parts judging``): the
stream of records judged by the stateless filters and prepared for dedup, with each number of
workers and nothing behind it (no dedup index, no commit), and the read stream without workers,
so the part that spreads is measured apart from what stays in the driver.

    .venv/bin/python benchmarks/bench_filter_scale.py [--records 200000] [--workers 1 2 4] [--parts runs judging]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.filter_corpus import write_parquet  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
BASELINE = "ca96043"  # main without the workers: sdg filter judges the whole chain in the driver


def checkout(revision: str, directory: Path) -> Path:
    """The source tree at ``revision``, extracted under ``directory``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "gen", "filters", "cluster"],
                             check=True, capture_output=True)
    tarfile.open(fileobj=io.BytesIO(archive.stdout)).extractall(directory, filter="data")
    return directory


def sdg_filter(tree: Path, corpus: Path, output: Path, address: str, overrides: list[str]) -> dict:
    """One ``sdg filter`` of ``tree``'s code: its manifest, with the driver's CPU seconds."""
    command = [sys.executable, "-m", "gen.cli", "filter", str(corpus), "--spec", str(REPO / "examples" / "filter.yaml"),
               "--output", str(output), "--address", address, "--no-progress", "--no-report",
               *[arg for override in overrides for arg in ("--set", override)]]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    process_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if finished.returncode != 0:
        raise RuntimeError(f"sdg filter failed:\n{finished.stderr[-4000:]}")
    manifest = json.loads((output / "manifest.json").read_text())
    records = manifest["totals"]["records"]
    return {"records": records, "kept": manifest["totals"]["kept"], "wall_s": manifest["this_run"]["wall_s"],
            "process_s": round(process_s, 1),
            "driver_cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
            "records_per_s": round(records / manifest["this_run"]["wall_s"])}


def judging_alone(corpus: Path, address: str, workers: list[int]) -> dict[str, dict]:
    """Records/s of the workers' stream alone (the read task and the workers, consumed at once)."""
    import ray

    from filters.parallel import judged_on_workers
    from gen.keyset import KeySet
    from gen.seeds import SeedReader
    from gen.spec import load_spec

    spec = load_spec(REPO / "examples" / "filter.yaml", [f"seeds.paths={json.dumps([str(corpus)])}", "output.dir=unused"])
    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    results = {}
    try:
        for name, configs, count in [("read stream alone", [], None),
                                     *((f"judging, {n} worker(s)", spec.filters, n) for n in workers)]:
            started = time.perf_counter()
            records = sum(1 for _ in judged_on_workers(SeedReader([str(corpus)]), configs, KeySet(), count, 1000))
            wall = time.perf_counter() - started
            results[name] = {"records": records, "wall_s": round(wall, 1), "records_per_s": round(records / wall)}
    finally:
        ray.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus-per-node", type=int, default=2)
    parser.add_argument("--baseline", default=BASELINE, help="a revision whose sdg filter runs the chain in the driver")
    parser.add_argument("--parts", nargs="+", choices=["runs", "judging"], default=["runs", "judging"])
    args = parser.parse_args()

    from ray.cluster_utils import Cluster

    with tempfile.TemporaryDirectory(prefix="sdg-filter-scale-") as tmp:
        tmp = Path(tmp)
        corpus = write_parquet(tmp / "corpus.parquet", args.records)
        baseline = checkout(args.baseline, tmp / "baseline")
        # The head node declares no CPU: every worker runs on the worker nodes.
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        for _ in range(args.nodes):
            cluster.add_node(num_cpus=args.cpus_per_node)
        cluster.wait_for_nodes()
        runs: dict[str, dict] = {}
        judging: dict[str, dict] = {}
        try:
            address = cluster.address
            if "runs" in args.parts:
                runs[f"baseline {args.baseline} (driver only)"] = sdg_filter(baseline, corpus, tmp / "out-baseline",
                                                                             address, [])
                for workers in args.workers:
                    runs[f"{workers} worker(s)"] = sdg_filter(REPO, corpus, tmp / f"out-{workers}", address,
                                                              [f"filter_workers.concurrency={workers}"])
            if "judging" in args.parts:
                judging = judging_alone(corpus, address, args.workers)
        finally:
            cluster.shutdown()

    one, baseline = runs.get("1 worker(s)"), runs.get(f"baseline {args.baseline} (driver only)")
    print(f"sdg filter, {args.records:,} records, examples/filter.yaml, cluster of {args.nodes} nodes x "
          f"{args.cpus_per_node} CPUs declared (this machine: {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at the end)")
    for name, result in runs.items():
        ratios = [f"x{result['records_per_s'] / other['records_per_s']:.2f} of {label}"
                  for other, label in ((one, "1 worker"), (baseline, "the driver-only path")) if other]
        print(f"  {name}: {result['records_per_s']:,} records/s ({result['wall_s']:.1f} s, driver CPU "
              f"{result['driver_cpu_s']} s, kept {result['kept']:,}){''.join(', ' + r for r in ratios)}")
    kept = {result["kept"] for result in runs.values()}
    if runs:
        print("every run kept the same number of records" if len(kept) == 1 else f"KEPT DIFFERS: {sorted(kept)}")
    one = judging.get("judging, 1 worker(s)")
    for name, result in judging.items():
        ratio = f", x{result['records_per_s'] / one['records_per_s']:.2f} of 1 worker" if one and name != "read stream alone" else ""
        print(f"  {name}: {result['records_per_s']:,} records/s ({result['wall_s']:.1f} s){ratio}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "filter_scale.json").write_text(json.dumps({"args": vars(args), "runs": runs, "judging": judging},
                                                          indent=2))


if __name__ == "__main__":
    main()
