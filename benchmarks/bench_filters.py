"""Filter throughput: records/s per core for each filter and for the whole chain.

Records of realistic length: an instruction of one real P3 prompt (plus a slice of another, so
that not every record is an exact duplicate) and a ~150-word response of real P3 text; random words
when ``../shared/data`` is absent. 100k records by default (``--records N``), judged in batches of
1,000 as the run does at commit time. Per core = records / CPU seconds of the driver process (the
filters run in the driver; the dedup index actors' own CPU is reported beside it). Also measures
MinHash signatures alone on ~200-word texts against datasketch's default SHA-1 path.

Writes ``benchmarks/results/filters.json``. Not a test.
Run: ``.venv/bin/python benchmarks/bench_filters.py [--records N]``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from filters import build_chain  # noqa: E402
from filters.decontam import DecontaminationConfig  # noqa: E402
from filters.dedup import DedupConfig, compute_signatures  # noqa: E402
from filters.langid import LanguageIdConfig  # noqa: E402
from filters.quality import (  # noqa: E402
    GopherQualityConfig,
    GopherRepetitionConfig,
    InstructionRulesConfig,
    RefusalConfig,
    ResponseRulesConfig,
)
from filters.text import normalize  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"
BATCH = 1000


def source_texts() -> list[str]:
    paths = sorted((SHARED / "p3_sample").glob("*.jsonl"))
    if paths:
        return [json.loads(line)["prompt"] for path in paths for line in path.open()]
    rng = random.Random(0)
    vocabulary = [f"word{i}" for i in range(20000)]
    return [" ".join(rng.choices(vocabulary, k=rng.randint(20, 80))) for _ in range(5000)]


def make_records(count: int, texts: list[str]) -> list[dict]:
    rng = random.Random(1)
    words = " ".join(texts).split()
    records = []
    for i in range(count):
        start = rng.randrange(len(words) - 200)
        instruction = f"{rng.choice(texts)} {' '.join(words[start : start + 12])}"
        response = " ".join(words[start + 12 : start + 12 + rng.randint(120, 180)])
        records.append({"id": f"r{i}", "finish_reason": "stop", "metadata": {},
                        "messages": [{"role": "user", "content": instruction},
                                     {"role": "assistant", "content": response}]})
    return records


def benchmark_file(directory: Path, texts: list[str]) -> str:
    """A benchmark to decontaminate against: the Self-Instruct seeds when present, else 500 texts."""
    seeds = SHARED / "self_instruct_seed_tasks.jsonl"
    if seeds.exists():
        return json.dumps({"path": str(seeds), "column": "instruction"})
    path = directory / "bench.jsonl"
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts[:500]))
    return json.dumps({"path": str(path), "column": "prompt"})


def timed(chain, records: list[dict]) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    kept = 0
    for start in range(0, len(records), BATCH):
        k, _ = chain([dict(r) for r in records[start : start + BATCH]])
        kept += len(k)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"records": len(records), "kept": kept, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "records_per_s_wall": round(len(records) / wall), "records_per_core_s": round(len(records) / cpu)}


def signature_speed(texts: list[str]) -> dict:
    from datasketch import MinHash

    rng = random.Random(2)
    words = " ".join(texts).split()
    docs = [" ".join(words[s : s + 200]) for s in (rng.randrange(len(words) - 200) for _ in range(20000))]
    config = DedupConfig()
    cpu = time.process_time()
    for start in range(0, len(docs), BATCH):
        compute_signatures(config, docs[start : start + BATCH])
    ours = len(docs) / (time.process_time() - cpu)
    sample = docs[:3000]
    cpu = time.process_time()
    shingles = []
    for doc in sample:
        w = normalize(doc).split()
        shingles.append([" ".join(w[i : i + 5]).encode() for i in range(len(w) - 4)])
    MinHash.bulk(shingles, num_perm=config.num_perm)
    sha1 = len(sample) / (time.process_time() - cpu)
    return {"words_per_doc": 200, "docs_per_core_s": round(ours), "datasketch_sha1_bulk_docs_per_core_s": round(sha1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    count = parser.parse_args().records
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    texts = source_texts()
    records = make_records(count, texts)
    results: dict = {"records": count, "batch": BATCH, "text_source": "p3_sample" if (SHARED / "p3_sample").exists() else "random"}
    results["minhash_signatures"] = signature_speed(texts)
    print("signatures:", results["minhash_signatures"])
    with tempfile.TemporaryDirectory() as tmp:
        decontamination = DecontaminationConfig.model_validate({"benchmarks": [json.loads(benchmark_file(Path(tmp), texts))]})
        configs = [ResponseRulesConfig(), InstructionRulesConfig(), RefusalConfig(), GopherRepetitionConfig(),
                   GopherQualityConfig(), LanguageIdConfig(), DedupConfig(), decontamination]
        results["per_filter"] = {}
        for config in configs:
            chain = build_chain([config])
            results["per_filter"][config.type] = timed(chain, records)
            chain.close()
            print(config.type, results["per_filter"][config.type])
        chain = build_chain(configs)
        results["chain"] = timed(chain, records)
        results["chain"]["stats"] = chain.stats()
        chain.close()
    print("chain:", {k: v for k, v in results["chain"].items() if k != "stats"})
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "filters.json").write_text(json.dumps(results, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
