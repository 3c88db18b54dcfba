"""Scale: synthetic seeds streamed through a model-free run; records/s and the driver's peak RSS
at each size, so a cost per record that grows with the run shows as a ratio.

For each ``--sizes N`` it writes N synthetic labelled rows (JSONL, ``format: rows``), runs
``sdg run`` in a fresh process on a spec of the ``template`` stage (examples/template.yaml's three
templates) and the rule filters (instruction_rules, response_rules, refusal, gopher_repetition,
gopher_quality), and reads the records made and the generation time from the run's manifest and
the driver's peak RSS from the kernel (``VmHWM`` of its process, read until it exits; Ray's own
processes are not the driver) and its CPU seconds. Prints records/s (wall), records per driver
CPU-second (less moved by other jobs on a shared machine) and peak RSS per size, each also as a
ratio of the smallest size's. ``--output`` puts the runs' output under a URI (``s3://bucket/prefix``).

Run: ``nice -n 19 .venv/bin/python benchmarks/bench_scale.py --sizes 1000000 10000000``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

SPEC = """\
seeds:
  paths: [{seeds}]
  format: rows
stages:
  - type: template
    answer_choices: [negative, positive]
    templates:
      - name: is_positive
        jinja: "Is the following product review positive?\\n{{{{ text }}}} ||| {{{{ 'yes' if label | int == 1 else 'no' }}}}"
      - name: sentiment
        jinja: "What is the sentiment of this review, negative or positive?\\n{{{{ text }}}} ||| {{{{ answer_choices[label | int] }}}}"
      - name: title_and_review
        jinja: "Title: {{{{ title }}}}\\nReview: {{{{ text }}}}\\nDoes the reviewer like the product? ||| {{{{ answer_choices[label | int] }}}}"
    seed: 0
filters:
  - type: instruction_rules
  - type: response_rules
  - type: refusal
  - type: gopher_repetition
  - type: gopher_quality
output:
  dir: {output}
  rows_per_shard: 10000
"""

WORDS = ("the kettle boils water fast and the lid closes well but the handle gets hot after a few "
         "minutes so I would buy it again for the price although the cable is short and the light "
         "is too bright at night my family likes the colour and it cleans easily").split()


def write_seeds(path: Path, count: int) -> None:
    """``count`` distinct review rows, written a block at a time."""
    rng = np.random.default_rng(0)
    vocabulary = np.array(WORDS)
    with open(path, "w") as f:
        for start in range(0, count, 100_000):
            n = min(100_000, count - start)
            lengths = rng.integers(12, 40, size=n)
            words = vocabulary[rng.integers(0, len(vocabulary), size=(n, 40))].tolist()
            labels = rng.integers(0, 2, size=n).tolist()
            f.writelines(json.dumps({"title": f"Review {start + i}", "text": " ".join(words[i][:lengths[i]]) + ".",
                                     "label": labels[i]}) + "\n" for i in range(n))


def watch(process: subprocess.Popen) -> tuple[int, float]:
    """The process's peak resident set (VmHWM, kept by the kernel) and its CPU seconds (user +
    system, its own, not Ray's processes), read until it exits."""
    peak, cpu_s = 0, 0.0
    proc = Path(f"/proc/{process.pid}")
    while process.poll() is None:
        try:
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.2)
    return peak, cpu_s


def one_size(count: int, work: Path, output_root: str, address: str | None) -> dict:
    seeds = work / f"seeds-{count}.jsonl"
    if not seeds.exists():
        started = time.perf_counter()
        write_seeds(seeds, count)
        print(f"  wrote {count:,} seeds in {time.perf_counter() - started:.0f} s", flush=True)
    output = f"{output_root.rstrip('/')}/run-{count}-{int(time.time())}"
    spec = work / f"spec-{count}.yaml"
    spec.write_text(SPEC.format(seeds=seeds, output=output))
    log = work / f"run-{count}.log"
    with open(log, "w") as stderr:
        # --no-report: the run itself; the report reads every record's counted columns whole
        process = subprocess.Popen([sys.executable, "-m", "gen.cli", "run", str(spec), "--no-progress", "--no-report",
                                    *(["--address", address] if address else [])],
                                   cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
        peak, cpu_s = watch(process)
    if process.returncode != 0:
        raise SystemExit(f"sdg run failed; see {log}")
    sys.path.insert(0, str(REPO))
    from gen.storage import Location

    manifest = json.loads(Location.of(output).child("manifest.json").read_bytes())
    records, seconds = manifest["totals"]["records"], manifest["this_run"]["generation_s"]
    return {"seeds": count, "records": records, "kept": manifest["totals"]["kept"],
            "generation_s": seconds, "records_per_s": round(records / seconds, 1),
            "driver_cpu_s": round(cpu_s, 1), "records_per_driver_cpu_s": round(records / cpu_s, 1),
            "driver_peak_rss_mb": round(peak / 2**20, 1), "output": output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--work", type=Path, default=None, help="where seeds and specs go (default: a temp dir)")
    parser.add_argument("--output", default=None, help="output root, a path or URI (default: under --work)")
    parser.add_argument("--address", default=None, help="a Ray cluster to join (default: each run starts its own)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="sdg-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for count in sorted(args.sizes):
        print(f"{count:,} seeds:", flush=True)
        rows.append(one_size(count, work, args.output or str(work / "out"), args.address))
        row = rows[-1]
        print(f"  {row['records']:,} records in {row['generation_s']:.0f} s: {row['records_per_s']:,.0f} records/s, "
              f"{row['records_per_driver_cpu_s']:,.0f} per driver CPU-second, driver peak RSS "
              f"{row['driver_peak_rss_mb']:,.0f} MB", flush=True)
    base = rows[0]
    for row in rows:
        row["records_per_s_ratio"] = round(row["records_per_s"] / base["records_per_s"], 3)
        row["per_cpu_s_ratio"] = round(row["records_per_driver_cpu_s"] / base["records_per_driver_cpu_s"], 3)
        row["peak_rss_ratio"] = round(row["driver_peak_rss_mb"] / base["driver_peak_rss_mb"], 3)
    print(f"\n{'seeds':>12} {'records/s':>10} {'ratio':>6} {'per CPU-s':>10} {'ratio':>6} {'peak RSS MB':>12} {'ratio':>6}")
    for row in rows:
        print(f"{row['seeds']:>12,} {row['records_per_s']:>10,.0f} {row['records_per_s_ratio']:>6.3f} "
              f"{row['records_per_driver_cpu_s']:>10,.0f} {row['per_cpu_s_ratio']:>6.3f} "
              f"{row['driver_peak_rss_mb']:>12,.0f} {row['peak_rss_ratio']:>6.3f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
