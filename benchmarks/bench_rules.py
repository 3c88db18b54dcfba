"""How well the default quality rules separate good answers from degenerate ones.

Runs the rule chain of ``examples/filter.yaml`` without ``language_id`` and ``dedup`` (they judge
language and novelty, not quality) over labelled sets:

* GOOD: the hand-written answers of ``tests/data/good_answers.jsonl`` (code, LaTeX, tables, lists,
  labels, URLs, long inputs) and, when ``../shared/data`` is present, the 175 Self-Instruct seed
  tasks' human-written answers;
* BAD: degenerate answers made from every good one (``tests/labelled_answers.py``: truncated,
  looping, empty, punctuation-only, echoed, refused).

Prints, per filter alone and for the whole chain, the share of GOOD dropped (target <= 5%) and of
BAD dropped (target >= 90%), which reasons dropped them, and the chain's share per bad kind.
``--baseline REV`` does the same with ``filters/`` and ``examples/filter.yaml`` as they were at
git revision REV (default: the rules before they were calibrated for instruction data), in the
same run. Writes ``benchmarks/results/rules.json``. Not a test.
Run: ``.venv/bin/python benchmarks/bench_rules.py [--baseline REV]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_filters import checkout, load_filters  # noqa: E402

from tests.labelled_answers import GOOD_ANSWERS, degenerate, read_good  # noqa: E402

SEED_TASKS = REPO.parent / "shared" / "data" / "self_instruct_seed_tasks.jsonl"
RESULTS = REPO / "benchmarks" / "results"
NOT_QUALITY = {"language_id", "dedup"}
BEFORE_CALIBRATION = "1d1f606"


def quality_chain(package: SimpleNamespace, spec_yaml: str) -> list:
    """The quality filters' configs of a filter spec, validated by ``package``'s own classes."""
    from pydantic import TypeAdapter

    specs = [f for f in yaml.safe_load(spec_yaml)["filters"] if f["type"] not in NOT_QUALITY]
    return TypeAdapter(list[package.FilterSpec]).validate_python(specs)


def first_drops(package: SimpleNamespace, configs: list, records: list[dict]) -> list[tuple[str, str] | None]:
    """Each record's (filter, reason) from the chain of ``configs``; None when kept."""
    chain = package.build_chain(configs)
    _, dropped = chain([dict(r) for r in records])
    by_id = {r["id"]: (r["_drop"]["filter"], r["_drop"]["reason"]) for r in dropped}
    return [by_id.get(r["id"]) for r in records]


def share(drops: list, of: int) -> float:
    return round(100 * sum(d is not None for d in drops) / max(of, 1), 1)


def measure(package: SimpleNamespace, configs: list, good: list[dict], bad: list[tuple[str, dict]]) -> dict:
    bad_records = [record for _, record in bad]
    result: dict = {"per_filter_alone": {}, "chain": {}}
    for config in configs:
        good_drops = first_drops(package, [config], good)
        bad_drops = first_drops(package, [config], bad_records)
        result["per_filter_alone"][config.type] = {
            "good_dropped_pct": share(good_drops, len(good)), "bad_dropped_pct": share(bad_drops, len(bad)),
            "good_reasons": dict(Counter(reason for _, reason in filter(None, good_drops)).most_common()),
            "bad_reasons": dict(Counter(reason for _, reason in filter(None, bad_drops)).most_common()),
        }
    good_drops = first_drops(package, configs, good)
    bad_drops = first_drops(package, configs, bad_records)
    kinds = Counter(kind for kind, _ in bad)
    caught = Counter(kind for (kind, _), d in zip(bad, bad_drops, strict=True) if d is not None)
    result["chain"] = {
        "good_dropped_pct": share(good_drops, len(good)), "bad_dropped_pct": share(bad_drops, len(bad)),
        "good_reasons": dict(Counter(f"{f}:{r}" for f, r in filter(None, good_drops)).most_common()),
        "bad_reasons": dict(Counter(f"{f}:{r}" for f, r in filter(None, bad_drops)).most_common()),
        "bad_dropped_pct_by_kind": {kind: round(100 * caught[kind] / kinds[kind], 1) for kind in kinds},
        "good_dropped": [{"seed_id": record.get("seed_id"), "drop": list(d)}
                         for record, d in zip(good, good_drops, strict=True) if d is not None],
    }
    return result


def report(name: str, result: dict) -> None:
    print(f"\n== {name}")
    print(f"{'filter (alone)':<22}{'good dropped':>14}{'bad dropped':>13}  reasons on good")
    for filter_name, row in result["per_filter_alone"].items():
        print(f"{filter_name:<22}{row['good_dropped_pct']:>13}%{row['bad_dropped_pct']:>12}%  {row['good_reasons']}")
    chain = result["chain"]
    print(f"{'whole chain':<22}{chain['good_dropped_pct']:>13}%{chain['bad_dropped_pct']:>12}%  {chain['good_reasons']}")
    print("chain, bad dropped by kind:", chain["bad_dropped_pct_by_kind"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default=BEFORE_CALIBRATION,
                        help="git revision whose rules to measure beside the current ones ('' for none)")
    args = parser.parse_args()
    good = read_good(GOOD_ANSWERS, *([SEED_TASKS] if SEED_TASKS.exists() else []))
    bad = degenerate(good)
    origin = {"good": f"{GOOD_ANSWERS.relative_to(REPO)}" + (" + Self-Instruct seed tasks" if SEED_TASKS.exists() else ""),
              "bad": "deterministic corruptions of the good answers (tests/labelled_answers.py)"}
    print(f"GOOD: {len(good)} answers ({origin['good']})")
    print(f"BAD: {len(bad)} answers ({origin['bad']})")
    results: dict = {"good": len(good), "bad": len(bad), "origin": origin, "targets": {"good_dropped_pct_max": 5,
                                                                                         "bad_dropped_pct_min": 90}}
    with tempfile.TemporaryDirectory() as tmp:
        versions = {"current": (load_filters(None), (REPO / "examples" / "filter.yaml").read_text())}
        if args.baseline:
            spec = subprocess.run(["git", "-C", str(REPO), "show", f"{args.baseline}:examples/filter.yaml"],
                                  check=True, capture_output=True, text=True).stdout
            versions["baseline"] = (load_filters(checkout(args.baseline, Path(tmp) / "baseline")), spec)
            results["baseline"] = args.baseline
        for name, (package, spec) in versions.items():
            results[name] = measure(package, quality_chain(package, spec), good, bad)
            report(f"{name}" + (f" ({args.baseline})" if name == "baseline" else ""), results[name])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rules.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
