"""How well the default quality rules separate good answers from degenerate ones.

Runs the rule chain of ``examples/filter.yaml`` without ``language_id`` and ``dedup`` (they judge
language and novelty, not quality) over labelled sets:

* GOOD: the hand-written answers of ``tests/data/good_answers.jsonl`` (code, LaTeX, tables, lists,
  labels, URLs, long inputs) and, when ``../shared/data`` is present, the 175 Self-Instruct seed
  tasks' human-written answers;
* BAD, corrupted: degenerate answers made from every good one (``tests/labelled_answers.py``:
  truncated, looping, empty, punctuation-only, echoed, refused);
* BAD, real model: degenerate answers of the embedded SmolLM2-135M-Instruct to the same
  instructions (``benchmarks/real_model_answers.py``: truncated, looping, empty, refusals; made
  once through sdg's engine and cached, ``--no-real-model`` leaves them out).

Prints, per filter alone and for the whole chain, the share of GOOD dropped (target <= 5%) and of
each BAD set dropped (target >= 90%), which reasons dropped them, and the chain's share per bad
kind; and what share of the real model's answers to the seed tasks at normal settings the chain
keeps (not labelled). ``--baseline REV`` does the same with ``filters/`` and
``examples/filter.yaml`` as they were at git revision REV (default: the rules before they were
calibrated for instruction data), in the same run. Writes ``benchmarks/results/rules.json``. Not a
test. Run: ``.venv/bin/python benchmarks/bench_rules.py [--baseline REV] [--no-real-model]``
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

import real_model_answers  # noqa: E402

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


def measure(package: SimpleNamespace, configs: list, good: list[dict], bad_sets: dict[str, list[tuple[str, dict]]],
            normal: list[dict]) -> dict:
    result: dict = {"per_filter_alone": {}, "chain": {}}
    for config in configs:
        good_drops = first_drops(package, [config], good)
        row = result["per_filter_alone"][config.type] = {
            "good_dropped_pct": share(good_drops, len(good)),
            "good_reasons": dict(Counter(reason for _, reason in filter(None, good_drops)).most_common())}
        for name, bad in bad_sets.items():
            bad_drops = first_drops(package, [config], [record for _, record in bad])
            row[f"{name}_dropped_pct"] = share(bad_drops, len(bad))
            row[f"{name}_reasons"] = dict(Counter(reason for _, reason in filter(None, bad_drops)).most_common())
    good_drops = first_drops(package, configs, good)
    chain = result["chain"] = {
        "good_dropped_pct": share(good_drops, len(good)),
        "good_reasons": dict(Counter(f"{f}:{r}" for f, r in filter(None, good_drops)).most_common()),
        "good_dropped": [{"seed_id": record.get("seed_id"), "drop": list(d)}
                         for record, d in zip(good, good_drops, strict=True) if d is not None],
    }
    for name, bad in bad_sets.items():
        bad_drops = first_drops(package, configs, [record for _, record in bad])
        kinds = Counter(kind for kind, _ in bad)
        caught = Counter(kind for (kind, _), d in zip(bad, bad_drops, strict=True) if d is not None)
        chain[f"{name}_dropped_pct"] = share(bad_drops, len(bad))
        chain[f"{name}_reasons"] = dict(Counter(f"{f}:{r}" for f, r in filter(None, bad_drops)).most_common())
        chain[f"{name}_dropped_pct_by_kind"] = {kind: round(100 * caught[kind] / kinds[kind], 1) for kind in kinds}
        chain[f"{name}_kept"] = [{"kind": kind, "seed_id": record.get("seed_id"), "response": record["messages"][-1]["content"]}
                                 for (kind, record), d in zip(bad, bad_drops, strict=True) if d is None]
    if normal:
        drops = first_drops(package, configs, normal)
        result["real_normal"] = {"answers": len(normal), "kept_pct": round(100 - share(drops, len(normal)), 1),
                                 "reasons": dict(Counter(f"{f}:{r}" for f, r in filter(None, drops)).most_common())}
    return result


def report(name: str, result: dict, bad_sets: list[str]) -> None:
    print(f"\n== {name}")
    print(f"{'filter (alone)':<22}{'good dropped':>14}" + "".join(f"{s + ' dropped':>22}" for s in bad_sets)
          + "  reasons on good")
    rows = [*result["per_filter_alone"].items(), ("whole chain", result["chain"])]
    for filter_name, row in rows:
        print(f"{filter_name:<22}{row['good_dropped_pct']:>13}%" + "".join(f"{row[f'{s}_dropped_pct']:>21}%" for s in bad_sets)
              + f"  {row['good_reasons']}")
    for s in bad_sets:
        print(f"chain, {s} dropped by kind:", result["chain"][f"{s}_dropped_pct_by_kind"])
    if "real_normal" in result:
        normal = result["real_normal"]
        print(f"real model, seed tasks at normal settings: {normal['kept_pct']}% of {normal['answers']} kept; "
              f"dropped by {normal['reasons']}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default=BEFORE_CALIBRATION,
                        help="git revision whose rules to measure beside the current ones ('' for none)")
    parser.add_argument("--no-real-model", action="store_true", help="leave out the real model's answers")
    parser.add_argument("--regenerate", action="store_true", help="make the real model's answers again")
    args = parser.parse_args()
    good = read_good(GOOD_ANSWERS, *([SEED_TASKS] if SEED_TASKS.exists() else []))
    bad_sets = {"corrupted": degenerate(good)}
    origin = {"good": f"{GOOD_ANSWERS.relative_to(REPO)}" + (" + Self-Instruct seed tasks" if SEED_TASKS.exists() else ""),
              "corrupted": "deterministic corruptions of the good answers (tests/labelled_answers.py)"}
    normal: list[dict] = []
    if not args.no_real_model:
        bad_sets["real"], normal, left_out = real_model_answers.labelled(good, real_model_answers.answers(good, args.regenerate))
        origin["real"] = (f"{real_model_answers.MODEL}'s answers at degenerate settings (benchmarks/real_model_answers.py); "
                          f"left out by the labelling rules: {left_out}")
    print(f"GOOD: {len(good)} answers ({origin['good']})")
    for name, bad in bad_sets.items():
        print(f"BAD {name}: {len(bad)} answers {dict(Counter(kind for kind, _ in bad))} ({origin[name]})")
    results: dict = {"good": len(good), "bad": {name: len(bad) for name, bad in bad_sets.items()}, "origin": origin,
                     "targets": {"good_dropped_pct_max": 5, "bad_dropped_pct_min": 90}}
    with tempfile.TemporaryDirectory() as tmp:
        versions = {"current": (load_filters(None), (REPO / "examples" / "filter.yaml").read_text())}
        if args.baseline:
            spec = subprocess.run(["git", "-C", str(REPO), "show", f"{args.baseline}:examples/filter.yaml"],
                                  check=True, capture_output=True, text=True).stdout
            versions["baseline"] = (load_filters(checkout(args.baseline, Path(tmp) / "baseline")), spec)
            results["baseline"] = args.baseline
        for name, (package, spec) in versions.items():
            results[name] = measure(package, quality_chain(package, spec), good, bad_sets, normal)
            report(f"{name}" + (f" ({args.baseline})" if name == "baseline" else ""), results[name], list(bad_sets))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rules.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
