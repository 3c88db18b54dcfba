"""MinHash near-dedup accuracy: precision and recall at the threshold against exact Jaccard.

Ground truth is exact Jaccard over the very shingles the filter hashes (``shingle_hashes``, 5-word
n-grams of the normalised text, full 64-bit hashes), computed for every pair of documents that
shares at least one shingle (every other pair has Jaccard 0). A pair is predicted a duplicate when
it shares an LSH bucket and the Jaccard of the stored shingle sets (32-bit hashes, ``jaccard``)
reaches the threshold: exactly the filter's decision rule. So the only errors left are LSH misses
and 32-bit hash collisions. Two corpora:

* planted: base documents of real P3 text (or random words without the shared data), each with
  variants whose Jaccard with it is spread over 0.3..1.0, so pairs sit on both sides of the line;
* p3: the real P3 sample as it is (many templates over one source example: natural near-duplicates).

Prints a table and writes ``benchmarks/results/minhash_accuracy.json``. Not a test.
Run: ``.venv/bin/python benchmarks/bench_minhash_accuracy.py``
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from filters.dedup import DedupConfig, bucket_keys, compute_signatures, jaccard  # noqa: E402
from filters.text import normalize, shingle_hashes  # noqa: E402

P3 = REPO.parent / "shared" / "data" / "p3_sample"
RESULTS = REPO / "benchmarks" / "results"


def p3_texts() -> list[str]:
    return [json.loads(line)["prompt"] for path in sorted(P3.glob("*.jsonl")) for line in path.open()]


def planted_corpus(bases: int, seed: int = 0) -> list[str]:
    """``bases`` ~200-word documents, each followed by variants with 1..60 words replaced."""
    rng = random.Random(seed)
    if P3.exists():
        pool = " ".join(p3_texts()).split()
        base_docs = [pool[start : start + 200] for start in rng.sample(range(len(pool) - 200), bases)]
    else:
        vocabulary = [f"w{i}" for i in range(5000)]
        base_docs = [rng.choices(vocabulary, k=200) for _ in range(bases)]
    docs = []
    for words in base_docs:
        docs.append(" ".join(words))
        for changes in (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 30, 60):
            variant = list(words)
            for position in rng.sample(range(len(words)), changes):
                variant[position] = f"planted{rng.randrange(10**9)}"
            docs.append(" ".join(variant))
    return docs


def exact_jaccard_pairs(texts: list[str], ngram: int) -> dict[tuple[int, int], float]:
    """Exact Jaccard of every pair sharing a shingle (distinct shingles per document)."""
    hashes, bounds = shingle_hashes([normalize(t) for t in texts], ngram)
    sets = [np.unique(hashes[bounds[i] : bounds[i + 1]]) for i in range(len(texts))]
    postings: dict[int, list[int]] = defaultdict(list)
    for doc, shingles in enumerate(sets):
        for shingle in shingles.tolist():
            postings[shingle].append(doc)
    shared: dict[tuple[int, int], int] = defaultdict(int)
    for docs in postings.values():
        for a in range(len(docs)):
            for b in range(a + 1, len(docs)):
                shared[docs[a], docs[b]] += 1
    return {(a, b): n / (len(sets[a]) + len(sets[b]) - n) for (a, b), n in shared.items()}


def predicted_pairs(texts: list[str], config: DedupConfig) -> dict[tuple[int, int], float]:
    """Pairs sharing an LSH bucket (by the bucket keys the index stores), with the Jaccard of
    their stored shingle sets."""
    signatures = compute_signatures(config, texts)
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for band, keys in enumerate(bucket_keys(signatures.band_keys).tolist()):
        for doc, key in enumerate(keys):
            buckets[band, key].append(doc)
    candidates = {(a, b) for docs in buckets.values() for i, a in enumerate(docs) for b in docs[i + 1 :]}
    sets = signatures.shingles
    return {(a, b): jaccard(sets[a], sets[b]) for a, b in candidates}


def evaluate(name: str, texts: list[str], config: DedupConfig) -> dict:
    started = time.perf_counter()
    truth = exact_jaccard_pairs(texts, config.ngram)
    predicted = predicted_pairs(texts, config)
    positives = {pair for pair, j in truth.items() if j >= config.threshold}
    predicted_positives = {pair for pair, j in predicted.items() if j >= config.threshold}
    true_positives = positives & predicted_positives
    by_similarity = {}
    for low in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        high = round(low + 0.1, 1)
        in_bucket = [pair for pair, j in truth.items() if low <= j < high or (high >= 1.0 and j >= 1.0)]
        if in_bucket:
            by_similarity[f"{low:.1f}-{min(high, 1.0):.1f}"] = {
                "pairs": len(in_bucket),
                "lsh_candidate": round(sum(p in predicted for p in in_bucket) / len(in_bucket), 4),
                "predicted_duplicate": round(sum(p in predicted_positives for p in in_bucket) / len(in_bucket), 4),
            }
    return {
        "corpus": name,
        "documents": len(texts),
        "pairs_sharing_a_shingle": len(truth),
        "true_pairs_at_threshold": len(positives),
        "lsh_candidate_pairs": len(predicted),
        "precision": round(len(true_positives) / max(len(predicted_positives), 1), 4),
        "recall": round(len(true_positives) / max(len(positives), 1), 4),
        "share_predicted_duplicate_by_exact_jaccard": by_similarity,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    config = DedupConfig()
    settings = {k: getattr(config, k) for k in ("ngram", "num_perm", "bands", "threshold", "seed")}
    reports = [evaluate("planted", planted_corpus(bases=300), config)]
    if P3.exists():
        reports.append(evaluate("p3_sample", p3_texts(), config))
    for report in reports:
        print(f"{report['corpus']}: {report['documents']} docs, {report['true_pairs_at_threshold']} pairs >= "
              f"{config.threshold}, precision {report['precision']}, recall {report['recall']}")
        for bucket, row in report["share_predicted_duplicate_by_exact_jaccard"].items():
            print(f"   exact J {bucket}: {row['pairs']:>7} pairs, {row['lsh_candidate']:.4f} LSH candidates, "
                  f"{row['predicted_duplicate']:.4f} called duplicate")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "minhash_accuracy.json").write_text(json.dumps({"settings": settings, "corpora": reports}, indent=2))


if __name__ == "__main__":
    main()
