"""Time from `sdg run` to its first token, cold and warm, against a baseline revision.

    python benchmarks/bench_startup.py                                  # tiny model, against HEAD~1
    python benchmarks/bench_startup.py --model sdg/smollm2-135m-instruct --baseline 37345ed

Time to first token is the wall time of a whole `sdg run` process that answers one prompt with one
token: Ray start, model build or load, engine initialisation (compilation or not), the request, and
the exit (no report: `--no-report` where the tree has it). Each setting runs in fresh processes:

* cold: empty caches of its own (`SDG_CACHE`: the embedded model is built; vLLM's and Inductor's
  compile caches), the first run;
* warm: the same caches again, `--repeats` runs, the median.

Settings: this tree with its defaults, this tree with compilation forced on
(`enforce_eager: false`, to show what the compile cache saves and whether vLLM reloads it or
compiles again: its "Compiling model again due to a load failure" warnings are counted), and the
`--baseline` revision (checked out in a temporary git worktree) with its defaults. The manifest's
`this_run.startup` breakdown of this tree's runs is printed too. Writes benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SPEC = """\
seeds: {{paths: [seeds.jsonl]}}
model:
  name: {model}
  dtype: float32
  max_model_len: 1024
  engine_args: {engine_args}
sampling: {{max_tokens: 1, seed: 0}}
stages: [{{type: respond}}]
"""
RECOMPILED = "Compiling model again due to a load failure"


def one_run(tree: Path, spec: Path, output: Path, caches: Path) -> dict:
    env = {**os.environ, "SDG_CACHE": str(caches / "sdg"), "VLLM_CACHE_ROOT": str(caches / "vllm"),
           "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor")}
    # Start-up only: a tree that writes a report at the end of a run is told not to.
    no_report = ["--no-report"] if "--no-report" in (tree / "gen" / "cli.py").read_text() else []
    started = time.perf_counter()
    finished = subprocess.run([sys.executable, "-m", "gen.cli", "run", str(spec), "--set", f"output.dir={output}",
                               "--no-progress", *no_report], cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if finished.returncode != 0:
        sys.exit(f"sdg run failed in {tree}:\n{finished.stderr[-3000:]}")
    this_run = json.loads((output / "manifest.json").read_text())["this_run"]
    # vLLM's output is on the terminal, or in DIR/logs/ for a tree that keeps it there.
    engine_output = [finished.stderr, *(log.read_text(errors="replace") for log in output.glob("logs/replica-*.log"))]
    return {"seconds": round(seconds, 1), "recompiled": sum(text.count(RECOMPILED) for text in engine_output),
            "startup": this_run.get("startup")}


def setting(name: str, tree: Path, engine_args: dict, model: str, repeats: int, work: Path) -> dict:
    directory = work / name
    directory.mkdir()
    (directory / "seeds.jsonl").write_text(json.dumps({"instruction": "Say hello."}) + "\n")
    spec = directory / "spec.yaml"
    spec.write_text(SPEC.format(model=model, engine_args=json.dumps(engine_args)))
    caches = directory / "caches"
    cold = one_run(tree, spec, directory / "out-cold", caches)
    print(f"{name}: cold {cold['seconds']} s", flush=True)
    warm = []
    for index in range(repeats):
        warm.append(one_run(tree, spec, directory / f"out-warm{index}", caches))
        print(f"{name}: warm {warm[-1]['seconds']} s {warm[-1]['startup'] or ''}", flush=True)
    median = sorted(warm, key=lambda r: r["seconds"])[len(warm) // 2]
    return {"cold": cold, "warm_median": median, "warm_s": [r["seconds"] for r in warm],
            "warm_median_s": statistics.median(r["seconds"] for r in warm)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sdg/tiny-random-chat")
    parser.add_argument("--baseline", default="HEAD~1", help="git revision to compare with")
    parser.add_argument("--repeats", type=int, default=3, help="warm runs per setting; the median is reported")
    args = parser.parse_args()

    kv_cache = {"kv_cache_memory_bytes": 256 << 20}
    baseline = subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="sdg-startup-") as tmp:
        work = Path(tmp)
        baseline_tree = work / f"tree-{baseline}"
        subprocess.run(["git", "worktree", "add", "--detach", str(baseline_tree), baseline], cwd=REPO, check=True,
                       capture_output=True)
        try:
            results = {
                "this tree": setting("current", REPO, kv_cache, args.model, args.repeats, work),
                "this tree, compiled": setting("compiled", REPO, {**kv_cache, "enforce_eager": False}, args.model,
                                               args.repeats, work),
                f"baseline {baseline}": setting("baseline", baseline_tree, kv_cache, args.model, args.repeats, work),
            }
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline_tree)], cwd=REPO)
    reference = results[f"baseline {baseline}"]
    print(f"\ntime to first token of `sdg run` on {args.model} (seconds; warm: median of {args.repeats})")
    for name, result in results.items():
        print(f"  {name:24} cold {result['cold']['seconds']:6.1f} ({result['cold']['seconds'] / reference['cold']['seconds']:.2f}x)"
              f"   warm {result['warm_median_s']:6.1f} ({result['warm_median_s'] / reference['warm_median_s']:.2f}x)"
              f"   compile-cache reload failures: {result['cold']['recompiled']} cold, "
              f"{sum(r['recompiled'] for r in [result['warm_median']])} warm")
        if result["warm_median"]["startup"]:
            print(f"  {'':24} warm breakdown: {result['warm_median']['startup']}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.json").write_text(json.dumps({"model": args.model, "baseline": baseline, "results": results},
                                                     indent=2) + "\n")


if __name__ == "__main__":
    main()
