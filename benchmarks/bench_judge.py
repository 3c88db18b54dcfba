"""How well a judge and the score filter separate correct answers from answers corrupted in known ways.

Labelled sets (built here, deterministically):

* CORRECT: the hand-written answers of ``tests/data/good_answers.jsonl`` and, when ``../shared/data``
  is present, the Self-Instruct seed tasks' human-written answers (``--limit`` of them in all);
* CORRUPTED, each made from every correct one: ``swapped`` (a fluent answer to another
  instruction: the wrong answer a rule cannot see), ``digits`` (every digit of the answer changed:
  a wrong fact in the right form; answers without digits are left out), and, from
  ``tests/labelled_answers.py``, ``truncated``, ``echo`` (the instruction given back), ``refusal``.

Each answer goes through the ``judge`` stage (``--rubric``, structured output) on one engine of
``--model`` (default: the embedded SmolLM2-135M-Instruct), then the ``score`` filter at each
threshold of ``--thresholds``. Prints, per set, the mean score, the share of judgements that did
not parse, and the share the filter drops at each threshold: a useful judge drops the corrupted
far more often than the correct. Writes ``benchmarks/results/judge.json``. Not a test. Run:
``.venv/bin/python benchmarks/bench_judge.py [--limit 60] [--rubric alpagasus]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.labelled_answers import GOOD_ANSWERS, echo, read_good, refusal, truncated, with_response  # noqa: E402

SEED_TASKS = REPO.parent / "shared" / "data" / "self_instruct_seed_tasks.jsonl"
RESULTS = REPO / "benchmarks" / "results"
KV_CACHE_BYTES = 1 << 30


def swapped(record: dict, others: list[dict]) -> dict:
    """The answer of the record ``len(others) // 2`` places on: fluent, and to another instruction."""
    from gen.records import response_of

    position = next(i for i, other in enumerate(others) if other["id"] == record["id"])
    return with_response(record, response_of(others[(position + len(others) // 2) % len(others)]), "swapped")


def digits(record: dict) -> dict | None:
    """Every digit d of the answer made (d + 3) mod 10: the same form, wrong facts."""
    from gen.records import response_of

    answer = response_of(record)
    if not re.search(r"\d", answer):
        return None
    return with_response(record, re.sub(r"\d", lambda m: str((int(m.group()) + 3) % 10), answer), "digits")


def labelled(limit: int) -> list[tuple[str, dict]]:
    paths = [GOOD_ANSWERS] + ([SEED_TASKS] if SEED_TASKS.exists() else [])
    correct = [r for r in read_good(*paths) if any(m["role"] == "assistant" and m["content"].strip()
                                                    for m in r["messages"])][:limit]
    sets = [("correct", r) for r in correct]
    for record in correct:
        made = [swapped(record, correct), digits(record), truncated(record), echo(record), refusal(record)]
        sets += [(m["id"].rsplit("/", 1)[1], m) for m in made if m is not None]
    return sets


async def judge_all(stage, records: list[dict]) -> list[dict]:
    outs = await asyncio.gather(*(stage.process(record) for record in records))
    return [out for batch in outs for out in batch]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sdg/smollm2-135m-instruct")
    parser.add_argument("--rubric", default="alpagasus", choices=["alpagasus", "ultrafeedback"])
    parser.add_argument("--limit", type=int, default=60, help="correct answers (each makes up to 5 corrupted)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[4.5, 3.5, 2.5])
    parser.add_argument("--rationale-max-chars", type=int, default=200)
    args = parser.parse_args()

    import ray

    from cluster.engine import start_replicas
    from cluster.ray_cluster import connect
    from filters.score import Score, ScoreConfig
    from gen.embedded_models import local_path
    from gen.records import is_dropped
    from gen.sampling import Sampling
    from gen.stages.base import StageContext
    from gen.stages.judge import RUBRICS, Judge, JudgeConfig

    sets = labelled(args.limit)
    records = [{**record, "id": f"{kind}/{record['id']}", "work_key": record["id"], "method": "seed",
                "metadata": {}} for kind, record in sets]
    kinds = {record["id"]: kind for record, (kind, _) in zip(records, sets)}
    connected = connect(None)
    pool = start_replicas({"model": local_path(args.model), "served_model_name": args.model, "dtype": "float32",
                           "max_model_len": 2048, "seed": 0, "kv_cache_memory_bytes": KV_CACHE_BYTES},
                          replicas=1, tensor_parallel_size=1, max_in_flight_per_replica=256)
    try:
        stage = Judge(JudgeConfig(rubric=args.rubric, rationale_max_chars=args.rationale_max_chars),
                      StageContext(engine=pool, model=args.model, sampling=Sampling()))
        began = time.monotonic()
        judged = asyncio.run(judge_all(stage, records))
        seconds = time.monotonic() - began
    finally:
        pool.shutdown()
        if connected:
            ray.shutdown()

    aspects = RUBRICS[args.rubric].aspects
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for record in judged:
        by_kind[kinds[record["id"]]].append(record)
    result = {"model": args.model, "rubric": args.rubric, "judgements": len(judged), "seconds": round(seconds, 1),
              "judge_completion_tokens": stage.completion_tokens, "sets": {}}
    print(f"{args.model} judging with {args.rubric} ({len(judged)} answers, {seconds:.0f} s, "
          f"{stage.completion_tokens:,} judge tokens)")
    print(f"{'set':<10} {'n':>4} {'unparsed':>9} {'mean':>5}  " + "  ".join(f"dropped@{t:g}" for t in args.thresholds))
    for kind in ["correct", "swapped", "digits", "truncated", "echo", "refusal"]:
        rows = by_kind.get(kind, [])
        if not rows:
            continue
        parsed = [r for r in rows if not is_dropped(r)]
        means = [sum(r["scores"].values()) / len(aspects) for r in parsed]
        dropped = {}
        for threshold in args.thresholds:
            _, out = Score(ScoreConfig(at_least={a: threshold for a in aspects}))([dict(r) for r in parsed])
            # an unparsed judgement is a reject too: it never reaches the filter
            dropped[threshold] = (len(out) + len(rows) - len(parsed)) / len(rows)
        histogram = {str(v): sum(1 for m in means if m == v) for v in sorted(set(means))}
        result["sets"][kind] = {"n": len(rows), "unparsed": len(rows) - len(parsed),
                                "mean_score": round(sum(means) / len(means), 2) if means else None,
                                "dropped": {str(t): round(d, 3) for t, d in dropped.items()}, "scores": histogram}
        mean = f"{sum(means) / len(means):5.2f}" if means else "    -"
        print(f"{kind:<10} {len(rows):>4} {len(rows) - len(parsed):>9} {mean}  "
              + "  ".join(f"{dropped[t]:>10.0%}" for t in args.thresholds))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "judge.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
