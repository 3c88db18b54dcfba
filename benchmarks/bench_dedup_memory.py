"""Dedup index memory: bytes per indexed record, across all index shards, and the accuracy it keeps.

Synthetic instruction-like texts (``--words`` words from a 20,000-word vocabulary, distinct) go
through the real ``dedup`` filter in batches of ``--batch`` (as commits do): signatures, the
lookup in the real Ray index actors, the insert. After each size in ``--records``, every actor
reports the bytes of its arrays (``IndexShard.size``) and its process's RSS; the figure per
record is their sum over the shards divided by the records indexed.

Baseline in the same run: the index as it was at ``--baseline`` (Python dicts and sets), in this
process, filled with the first ``--baseline-records`` of the same texts and measured by
tracemalloc, beside the current index measured the same way.

Precision and recall at the threshold are those of ``bench_minhash_accuracy.py`` (planted
near-duplicates, the P3 sample when present), judged with the index's bucket keys.

Run: ``nice -n 19 .venv/bin/python benchmarks/bench_dedup_memory.py --records 1000000 10000000``
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from filters.dedup import Dedup, DedupConfig, IndexShard, compute_signatures  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
TARGET_BYTES_PER_RECORD = 300  # issue 10: <= 300 MB per 1M records across all index shards


def texts(count: int, words: int, seed: int = 0):
    """``count`` distinct synthetic instructions, generated a batch at a time."""
    rng = np.random.default_rng(seed)
    vocabulary = np.array([f"w{i}" for i in range(20_000)])
    for start in range(0, count, 10_000):
        n = min(10_000, count - start)
        drawn = vocabulary[rng.integers(0, len(vocabulary), size=(n, words))]
        yield [" ".join(row) + f" n{start + i}" for i, row in enumerate(drawn.tolist())]


def record_batches(count: int, words: int, batch: int):
    number = 0
    for chunk in texts(count, words):
        for start in range(0, len(chunk), batch):
            yield [{"id": f"{number + i:032x}", "messages": [{"role": "user", "content": text}]}
                   for i, text in enumerate(chunk[start : start + batch])]
            number += len(chunk[start : start + batch])


def measure_actors(sizes: list[int], words: int, batch: int, shards: int, address: str | None) -> list[dict]:
    import psutil
    import ray

    from cluster.ray_cluster import connect

    connect(address)  # None: a local cluster of its own
    dedup = Dedup(DedupConfig(index_shards=shards))
    pids = ray.get([s.__ray_call__.remote(lambda _: os.getpid()) for s in dedup._shards])
    rss_empty = sum(psutil.Process(pid).memory_info().rss for pid in pids)
    reports, done, started = [], 0, time.perf_counter()
    for records in record_batches(max(sizes), words, batch):
        dedup(records)  # prepared, then judged, as the chain does
        done += len(records)
        if done in sizes:
            sizes_now = ray.get([s.size.remote() for s in dedup._shards])
            rss = sum(psutil.Process(pid).memory_info().rss for pid in pids)
            indexed = sum(s["records"] for s in sizes_now)
            reports.append({
                "records": done, "indexed": indexed,
                "array_bytes_per_record": round(sum(s["bytes"] for s in sizes_now) / indexed, 1),
                "actor_rss_bytes_per_record": round((rss - rss_empty) / indexed, 1),
                "dropped": sum(dedup.dropped.values()), "seconds": round(time.perf_counter() - started, 1),
            })
            print(f"  {done:>11,} records: arrays {reports[-1]['array_bytes_per_record']} B/record, "
                  f"actors' RSS growth {reports[-1]['actor_rss_bytes_per_record']} B/record "
                  f"({reports[-1]['seconds']} s)", flush=True)
    dedup.close()
    ray.shutdown()
    return reports


def old_index_class(revision: str):
    source = subprocess.run(["git", "show", f"{revision}:filters/dedup.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = Path(f"/tmp/bench_dedup_memory_{revision}.py")
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"dedup_{revision}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.IndexShard


def traced_bytes_per_record(make_shards, insert, count: int, words: int, config: DedupConfig) -> float:
    """Heap bytes a set of shards holds after indexing ``count`` texts, per record (tracemalloc)."""
    batches = [compute_signatures(config, chunk) for chunk in texts(count, words)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    shards = make_shards()
    number = 0
    for signatures in batches:
        insert(shards, number, signatures)
        number += len(signatures.exact_keys)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del shards
    return held / count


def baseline(revision: str, count: int, words: int, shards: int) -> dict:
    config = DedupConfig(index_shards=shards)
    bands = [np.arange(config.bands) % shards == s for s in range(shards)]
    old_class = old_index_class(revision)

    def insert_old(index, first, signatures):
        ids = [f"{first + i:032x}" for i in range(len(signatures.exact_keys))]
        owned = [{} for _ in index]
        for record_id, shingles in zip(ids, signatures.shingles, strict=True):
            owned[hash(record_id) % shards][record_id] = shingles.tobytes()
        for s, shard in enumerate(index):
            shard.insert(ids, signatures.band_keys[:, bands[s]], signatures.exact_keys, owned[s])

    def insert_new(index, first, signatures):
        numbers = np.arange(first, first + len(signatures.exact_keys), dtype=np.int64)
        for s, shard in enumerate(index):
            owned = [(f"{first + i:032x}", signatures.shingles[i].tobytes())
                     for i in range((s - first) % shards, len(numbers), shards)]
            shard.insert(numbers, signatures.band_keys[:, bands[s]], signatures.exact_keys, owned)

    old = traced_bytes_per_record(lambda: [old_class(s, shards, config.ids_per_bucket) for s in range(shards)],
                                  insert_old, count, words, config)
    new = traced_bytes_per_record(
        lambda: [IndexShard(s, shards, config.ids_per_bucket, int(bands[s].sum())) for s in range(shards)],
        insert_new, count, words, config)
    return {"revision": revision, "records": count, "old_bytes_per_record": round(old, 1),
            "new_bytes_per_record": round(new, 1), "ratio": round(new / old, 3)}


def accuracy() -> list[dict]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_minhash_accuracy import P3, evaluate, p3_texts, planted_corpus

    config = DedupConfig()
    reports = [evaluate("planted", planted_corpus(bases=300), config)]
    if P3.exists():
        reports.append(evaluate("p3_sample", p3_texts(), config))
    return [{k: r[k] for k in ("corpus", "documents", "true_pairs_at_threshold", "precision", "recall")}
            for r in reports]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, nargs="+", default=[1_000_000], help="sizes to report at")
    parser.add_argument("--words", type=int, default=24, help="words per synthetic text")
    parser.add_argument("--batch", type=int, default=10_000, help="records per judged batch (a commit)")
    parser.add_argument("--shards", type=int, default=DedupConfig().index_shards, help="index actors")
    parser.add_argument("--baseline", default="1e5db49",
                        help="git revision of the index to compare with (default: the last with Python dicts and sets)")
    parser.add_argument("--baseline-records", type=int, default=100_000)
    parser.add_argument("--address", default=None, help="a Ray cluster to join (default: start one)")
    args = parser.parse_args()

    print(f"baseline: {args.baseline}'s index against this one, {args.baseline_records:,} records, in-process",
          flush=True)
    compared = baseline(args.baseline, args.baseline_records, args.words, args.shards)
    print(f"  {compared['old_bytes_per_record']} B/record then, {compared['new_bytes_per_record']} now: "
          f"ratio {compared['ratio']}", flush=True)
    print(f"this index in {args.shards} Ray actors, {args.words}-word texts, batches of {args.batch:,}:", flush=True)
    sizes = measure_actors(sorted(args.records), args.words, args.batch, args.shards, args.address)
    print("accuracy at the threshold (bench_minhash_accuracy's corpora, judged with the index's bucket keys):")
    quality = accuracy()
    for row in quality:
        print(f"  {row['corpus']}: {row['documents']} docs, {row['true_pairs_at_threshold']} true pairs, "
              f"precision {row['precision']}, recall {row['recall']}")
    for row in sizes:
        verdict = "under" if row["array_bytes_per_record"] <= TARGET_BYTES_PER_RECORD else "OVER"
        print(f"{row['records']:>11,} records: {row['array_bytes_per_record']} B/record in arrays "
              f"({verdict} the {TARGET_BYTES_PER_RECORD} B target), {row['actor_rss_bytes_per_record']} B/record "
              "of actor RSS")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dedup_memory.json").write_text(json.dumps(
        {"words": args.words, "batch": args.batch, "shards": args.shards, "baseline": compared,
         "sizes": sizes, "accuracy": quality}, indent=2))


if __name__ == "__main__":
    main()
