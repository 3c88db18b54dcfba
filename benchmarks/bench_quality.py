"""What Self-Instruct makes on a model: kept share, drops by reason, and diversity as the paper measured it.

    .venv/bin/python benchmarks/bench_quality.py [--target 300] [--model sdg/smollm2-135m-instruct]

One `sdg run`, as a user would start it: `self_instruct` grows `--target` new instructions from the
175 Self-Instruct seed tasks (`../shared/data/self_instruct_seed_tasks.jsonl`; `--seeds` for
another file), `respond` answers them, and the filter chain of `examples/filter.yaml` judges the
answers. The output dir is kept (`--output`, default benchmarks/results/quality/run): a rerun
resumes it, `--fresh` starts over. Then, from the shards:

* the funnel: instructions the stage made, how many it rejected and why, answers, kept;
* ROUGE-L F1 of each new instruction with its most similar seed (the paper's Figure 3);
* leading verbs and their direct objects (Figure 2), parsed as `gen/diversity.py` says;
* instruction and response lengths in words (Figure 4), and distinct-1/2;

each beside the same measure of the seed tasks themselves. Saves benchmarks/results/quality.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gen.diversity import distinct_n, nearest_rouge_l, verb_object_counts  # noqa: E402
from gen.records import instruction_of, response_of  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
SEED_TASKS = REPO.parent / "shared" / "data" / "self_instruct_seed_tasks.jsonl"


def spec_text(seeds: Path, model: str, target: int, output: Path) -> str:
    filters = yaml.safe_load((REPO / "examples" / "filter.yaml").read_text())["filters"]
    return yaml.safe_dump({
        "seeds": {"paths": [str(seeds.resolve())], "format": "self_instruct"},
        "model": {"name": model, "dtype": "float32", "max_model_len": 2048,
                  "engine_args": {"kv_cache_memory_bytes": 1 << 30}},
        "sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 256, "seed": 0},  # the answers
        # respond answers the instructions: an instruct model answers through its chat template
        "stages": [{"type": "self_instruct", "target": target, "instances": False, "sampling": {"max_tokens": 256}},
                   {"type": "respond"}],
        "filters": filters,
        "output": {"dir": str(output.resolve()), "rows_per_shard": 1000},
    }, sort_keys=False)


ROUGE_BINS = [i / 10 for i in range(11)]


def read(directory: Path) -> list[dict]:
    if not directory.exists() or not any(directory.glob("*.parquet")):
        return []
    return pq.read_table(directory).to_pylist()


def histogram(values: list[float], edges: list[float]) -> list[int]:
    counts = [0] * (len(edges) - 1)
    for value in values:
        index = min(sum(value >= edge for edge in edges[1:]), len(counts) - 1)
        counts[index] += 1
    return counts


def lengths(texts: list[str]) -> dict:
    words = sorted(len(text.split()) for text in texts)
    if not words:
        return {}
    return {"p10": words[len(words) // 10], "median": statistics.median(words),
            "p90": words[len(words) * 9 // 10], "max": words[-1], "mean": round(statistics.fmean(words), 1)}


def verbs_table(instructions: list[str]) -> dict:
    pairs, without = verb_object_counts(instructions)
    by_verb: Counter[str] = Counter()
    for (verb, _), count in pairs.items():
        by_verb[verb] += count
    top = {verb: {"count": count,
                  "objects": [[noun, n] for (v, noun), n in pairs.most_common() if v == verb and noun][:4]}
           for verb, count in by_verb.most_common(20)}
    return {"with_structure": sum(pairs.values()), "without": without, "distinct_verbs": len(by_verb),
            "distinct_pairs": sum(1 for (_, noun) in pairs if noun), "top_verbs": top}


def diversity(instructions: list[str]) -> dict:
    return {"count": len(instructions), "distinct_1": round(distinct_n(instructions, 1), 3),
            "distinct_2": round(distinct_n(instructions, 2), 3), "length_words": lengths(instructions),
            "verbs": verbs_table(instructions)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=int, default=300, help="new instructions to make")
    parser.add_argument("--model", default="sdg/smollm2-135m-instruct")
    parser.add_argument("--seeds", type=Path, default=SEED_TASKS)
    parser.add_argument("--output", type=Path, default=RESULTS / "quality" / "run")
    parser.add_argument("--fresh", action="store_true", help="delete the output dir first")
    args = parser.parse_args()
    if not args.seeds.exists():
        sys.exit(f"{args.seeds} not found: the 175 Self-Instruct seed tasks live in ../shared/data (--seeds FILE)")
    if args.fresh and args.output.exists():
        shutil.rmtree(args.output)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    spec = args.output.parent / "spec.yaml"
    spec.write_text(spec_text(args.seeds, args.model, args.target, args.output))
    subprocess.run([sys.executable, "-m", "gen.cli", "run", str(spec), "--no-progress"], cwd=REPO, check=True)

    seeds = [json.loads(line)["instruction"] for line in args.seeds.read_text().splitlines() if line.strip()]
    kept, rejected = read(args.output / "data"), read(args.output / "rejected")
    by_stage = Counter(r["drop_filter"] for r in rejected if r["drop_filter"] == "self_instruct")
    answered = kept + [r for r in rejected if r["drop_filter"] != "self_instruct"]
    manifest = json.loads((args.output / "manifest.json").read_text())
    instructions = [instruction_of(r) for r in answered]
    kept_instructions = [instruction_of(r) for r in kept]
    rouge = nearest_rouge_l(instructions, seeds)
    result = {
        "model": args.model, "target": args.target, "seeds": len(seeds),
        "funnel": {"candidates": len(answered) + by_stage["self_instruct"],
                   "rejected_by_self_instruct": by_stage["self_instruct"], "answered": len(answered),
                   "kept": len(kept), "kept_share_of_answered": round(len(kept) / max(len(answered), 1), 3)},
        "drops": manifest["totals"]["dropped"],
        "rouge_l_to_nearest_seed": {"bins": ROUGE_BINS, "counts": histogram(rouge, ROUGE_BINS),
                                    "median": round(statistics.median(rouge), 3) if rouge else None},
        "generated": diversity(instructions), "kept": diversity(kept_instructions), "seed_tasks": diversity(seeds),
        "response_length_words": lengths([response_of(r) for r in answered]),
        "kept_response_length_words": lengths([response_of(r) for r in kept]),
        "distinct_responses": {n: round(distinct_n([response_of(r) for r in kept], n), 3) for n in (1, 2)},
        "hit_max_tokens": sum(r["finish_reason"] == "length" for r in answered),
        "generation_s": manifest["this_run"].get("generation_s"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps(result, indent=2))
    report(result)


def report(result: dict) -> None:
    funnel = result["funnel"]
    print(f"\n{result['model']}, self_instruct target {result['target']} from {result['seeds']} seed tasks")
    print(f"candidates {funnel['candidates']}: self_instruct rejected {funnel['rejected_by_self_instruct']}, "
          f"answered {funnel['answered']}, kept {funnel['kept']} ({funnel['kept_share_of_answered']:.1%} of answered); "
          f"answers that hit max_tokens: {result['hit_max_tokens']}")
    print("drops by filter and reason:")
    for name, reasons in result["drops"].items():
        print(f"  {name}: " + ", ".join(f"{reason} {count}" for reason, count in
                                        sorted(reasons.items(), key=lambda item: -item[1])))
    rouge = result["rouge_l_to_nearest_seed"]
    print(f"ROUGE-L F1 with the most similar seed (median {rouge['median']}):")
    top = max(rouge["counts"]) or 1
    for low, count in zip(rouge["bins"], rouge["counts"]):
        print(f"  {low:.1f}-{low + 0.1:.1f} {count:5d} {'#' * round(40 * count / top)}")
    print(f"{'':28}{'generated':>12}{'kept':>12}{'seed tasks':>12}")
    columns = [result["generated"], result["kept"], result["seed_tasks"]]
    for label, value in (("instructions", lambda d: d["count"]),
                         ("distinct-1", lambda d: d["distinct_1"]), ("distinct-2", lambda d: d["distinct_2"]),
                         ("words, median", lambda d: d["length_words"].get("median")),
                         ("words, p10-p90", lambda d: f"{d['length_words'].get('p10')}-{d['length_words'].get('p90')}"),
                         ("verb-object structure", lambda d: f"{d['verbs']['with_structure'] / max(d['count'], 1):.0%}"),
                         ("distinct verbs", lambda d: d["verbs"]["distinct_verbs"]),
                         ("distinct verb-object pairs", lambda d: d["verbs"]["distinct_pairs"])):
        print(f"  {label:26}" + "".join(f"{value(d)!s:>12}" for d in columns))
    answers = result["kept_response_length_words"]
    print(f"kept answers, words: median {answers.get('median')}, p10-p90 {answers.get('p10')}-{answers.get('p90')}, "
          f"max {answers.get('max')}; distinct-1/2 {result['distinct_responses'][1]} / {result['distinct_responses'][2]}")
    print("top leading verbs of the generated instructions, with their most common objects:")
    for verb, entry in result["generated"]["verbs"]["top_verbs"].items():
        objects = ", ".join(f"{noun} {n}" for noun, n in entry["objects"])
        print(f"  {verb:12}{entry['count']:4d}  {objects}")


if __name__ == "__main__":
    main()
