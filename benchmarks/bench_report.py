"""What writing the report adds to a run: the quickstart, timed in one process.

    .venv/bin/python benchmarks/bench_report.py [--spec examples/quickstart.yaml] [--runs 1]

Each run is a fresh ``sdg run SPEC`` into benchmarks/results/report/run (deleted first), as a user
starts it. The run's own wall time (``manifest.json``'s ``this_run.wall_s``: seeds, engine start,
generation, commits) and the time the same process then spends importing ``gen.report`` and
writing the page, plots and card (its log line in ``DIR/logs/sdg.log``) are measured on the same
machine at the same moment, so their ratio holds on a busy machine too. Saves
benchmarks/results/report.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
REPORT_LINE = re.compile(r"wrote \S+report\.html in ([\d.]+) s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=REPO / "examples" / "quickstart.yaml")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    output = RESULTS / "report" / "run"
    results = []
    for _ in range(args.runs):
        shutil.rmtree(output, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "gen.cli", "run", str(args.spec), "--no-progress",
                        "--set", f"output.dir={json.dumps(str(output))}"], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run_s = json.loads((output / "manifest.json").read_text())["this_run"]["wall_s"]
        report_s = float(REPORT_LINE.search((output / "logs" / "sdg.log").read_text()).group(1))
        results.append({"run_wall_s": run_s, "report_s": report_s, "ratio": round(report_s / run_s, 4)})
        print(f"{args.spec.name}: run {run_s:.1f} s, then the report {report_s:.1f} s: "
              f"+{report_s / run_s:.1%} of the run's time")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "report.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
