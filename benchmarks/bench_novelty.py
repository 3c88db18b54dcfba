"""The novelty check: gen.novelty.NoveltyIndex (MinHash/LSH + exact ROUGE-L) vs all-pairs ROUGE-L.

Both decide, for a stream of instructions, whether each joins a growing pool (ROUGE-L F1 <= 0.7
with every instruction already there), as Self-Instruct's bootstrap does. The all-pairs check is
Alpaca's: ``rouge_score``'s LCS F1 of the new instruction's tokens against every pool member's
tokens (Alpaca spreads that over 16 processes; here it runs in one, like the index).

Text: the 175 Self-Instruct seed tasks and the P3 prompt renderings from ``../shared/data`` (first
40 words of each prompt: several templates over one source example, so many natural
near-duplicates); synthetic instructions when that folder is absent.

Ground truth at every size is exact and cheap: a pair can only score above 0.7 if its multiset word
overlap bound ``2 overlap / (m + n)`` is above 0.7; all overlaps come from one sparse matrix product
and only pairs over the bound are scored with ``rouge_score``. That shortcut is checked against the
literal all-pairs loop at the sizes where the loop is timed. The literal loop is timed in full up
to ``--full-pairs-max``; above it its cost is estimated as (pairs it would score) x (mean time of a
random sample of those pairs), and the output says so.

    python benchmarks/bench_novelty.py              # writes benchmarks/results/novelty.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
from scipy import sparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gen.novelty import DEFAULT_THRESHOLD, NoveltyIndex, rouge_l, rouge_tokens  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results" / "novelty.json"
WORDS_PER_PROMPT = 40  # Self-Instruct instructions are short; long P3 articles would only add LCS cost


def real_instructions() -> list[str] | None:
    seeds = SHARED_DATA / "self_instruct_seed_tasks.jsonl"
    prompts = sorted((SHARED_DATA / "p3_sample").glob("*.jsonl"))
    if not seeds.exists() or not prompts:
        return None
    texts = [json.loads(line)["instruction"] for line in seeds.read_text().splitlines() if line.strip()]
    for path in prompts:
        for line in path.read_text().splitlines():
            if line.strip():
                words = json.loads(line)["prompt"].replace("\\", " ").split()
                texts.append(" ".join(words[:WORDS_PER_PROMPT]))
    return texts


def synthetic_instructions(count: int, seed: int = 0) -> list[str]:
    """Instruction-like sentences, a fifth of them light edits of an earlier one."""
    rng = random.Random(seed)
    verbs = "write describe explain summarize classify list compare translate suggest rewrite".split()
    nouns = ("poem story email review recipe plan essay tweet headline argument riddle letter "
             "summary dialogue advertisement lesson joke question list outline").split()
    topics = ("climate music history travel cooking football space economics friendship health "
              "chess gardening painting robots oceans volcanoes birds trains coffee mathematics").split()
    texts: list[str] = []
    while len(texts) < count:
        if texts and rng.random() < 0.2:
            words = rng.choice(texts).split()
            words[rng.randrange(len(words))] = rng.choice(topics)
            texts.append(" ".join(words))
        else:
            texts.append(f"{rng.choice(verbs).capitalize()} a {rng.choice(nouns)} about "
                         f"{rng.choice(topics)} and {rng.choice(topics)} for a {rng.choice(nouns)} "
                         f"in {rng.randint(2, 9)} sentences with {rng.choice(topics)}")
    return texts


def decisions_from_close_pairs(n: int, close: dict[int, set[int]]) -> list[bool]:
    """Stream decisions given, for each j, the earlier i with ROUGE-L F1 above the threshold."""
    accepted: list[bool] = []
    for j in range(n):
        accepted.append(not any(accepted[i] for i in close.get(j, ())))
    return accepted


def exact_close_pairs(tokens: list[list[str]], threshold: float) -> tuple[dict[int, set[int]], int]:
    """All (i < j) with ROUGE-L F1 > threshold, exactly; also how many pairs ROUGE-L was run on."""
    vocabulary: dict[str, int] = {}
    rows, cols = [], []
    for row, doc in enumerate(tokens):
        seen: dict[str, int] = {}
        for token in doc:  # numbered occurrences: a dot product of these rows is the multiset overlap
            seen[token] = seen.get(token, 0) + 1
            rows.append(row)
            cols.append(vocabulary.setdefault(f"{token}\x00{seen[token]}", len(vocabulary)))
    matrix = sparse.csr_matrix((np.ones(len(rows), np.int32), (rows, cols)),
                               shape=(len(tokens), len(vocabulary)))
    lengths = np.array([len(doc) for doc in tokens])
    close: dict[int, set[int]] = {}
    scored = 0
    block = 512
    for start in range(0, len(tokens), block):
        overlap = (matrix[start:start + block] @ matrix.T).toarray()
        total = lengths[start:start + block, None] + lengths[None, :]
        bound = np.divide(2 * overlap, total, out=np.zeros(overlap.shape), where=total > 0)
        for offset, i in zip(*np.nonzero(bound > threshold), strict=True):
            j = start + offset
            if i < j:
                scored += 1
                if rouge_l(tokens[j], tokens[i]) > threshold:
                    close.setdefault(j, set()).add(int(i))
    return close, scored


def all_pairs_stream(tokens: list[list[str]], threshold: float) -> tuple[list[bool], float]:
    """Alpaca's check, literally: each new instruction against every pool member."""
    started = time.perf_counter()
    pool: list[list[str]] = []
    accepted = []
    for doc in tokens:
        best = max((rouge_l(doc, member) for member in pool), default=0.0)
        accepted.append(best <= threshold)
        if best <= threshold:
            pool.append(doc)
    return accepted, time.perf_counter() - started


def all_pairs_estimate(tokens: list[list[str]], accepted: list[bool], sample: int, seed: int) -> tuple[float, int]:
    """Estimated seconds of the all-pairs stream: pairs it scores x mean time of sampled pairs."""
    pool_sizes = np.cumsum([0] + [int(a) for a in accepted[:-1]])
    pairs = int(pool_sizes.sum())
    rng = random.Random(seed)
    accepted_ids = [i for i, a in enumerate(accepted) if a]
    sampled = []
    for _ in range(sample):
        j = rng.randrange(1, len(tokens))
        earlier = [i for i in accepted_ids[: int(pool_sizes[j])]] or [0]
        sampled.append((tokens[j], tokens[rng.choice(earlier)]))
    started = time.perf_counter()
    for doc, member in sampled:
        rouge_l(doc, member)
    per_pair = (time.perf_counter() - started) / len(sampled)
    return per_pair * pairs, pairs


def index_stream(texts: list[str], threshold: float) -> tuple[list[bool], float, int]:
    started = time.perf_counter()
    index = NoveltyIndex(threshold)
    accepted = []
    for text in texts:
        novel = index.is_novel(index.nearest(text))
        accepted.append(novel)
        if novel:
            index.add(text)
    return accepted, time.perf_counter() - started, index.rouge_calls


def growth_exponent(sizes: list[int], costs: list[float]) -> float:
    """Slope of log(cost) over log(size) from the smallest to the largest size: 1 is linear, 2 quadratic."""
    return math.log(costs[-1] / costs[0]) / math.log(sizes[-1] / sizes[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="500,1000,2000,5000")
    parser.add_argument("--full-pairs-max", type=int, default=1000,
                        help="largest size at which the all-pairs loop is run in full")
    parser.add_argument("--sample-pairs", type=int, default=20000)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    texts = real_instructions()
    source = "real: Self-Instruct seeds + P3 prompt renderings (../shared/data)"
    if texts is None:
        texts, source = synthetic_instructions(max(sizes)), "synthetic (../shared/data absent)"
    random.Random(args.seed).shuffle(texts)  # spread each example's template renderings over the stream
    if len(texts) < max(sizes):
        sys.exit(f"only {len(texts)} instructions; the largest size asked for is {max(sizes)}")
    print(f"text: {source}; {len(texts)} instructions, threshold {args.threshold}")

    results = []
    for size in sizes:
        stream = texts[:size]
        tokens = [rouge_tokens(text) for text in stream]
        close, bound_scored = exact_close_pairs(tokens, args.threshold)
        truth = decisions_from_close_pairs(size, close)
        lsh, lsh_seconds, lsh_rouge_calls = index_stream(stream, args.threshold)
        row = {"size": size, "accepted": sum(truth), "lsh_seconds": lsh_seconds,
               "lsh_rouge_calls": lsh_rouge_calls, "exact_check_rouge_calls": bound_scored}
        if size <= args.full_pairs_max:
            literal, seconds = all_pairs_stream(tokens, args.threshold)
            if literal != truth:
                sys.exit(f"size {size}: the exact shortcut disagrees with the literal all-pairs loop")
            row.update(all_pairs_seconds=seconds, all_pairs_timing="measured")
        else:
            seconds, _ = all_pairs_estimate(tokens, truth, args.sample_pairs, args.seed)
            row.update(all_pairs_seconds=seconds,
                       all_pairs_timing=f"estimated from {args.sample_pairs} sampled pairs")
        row["all_pairs_rouge_calls"] = int(np.cumsum([0] + [int(a) for a in truth[:-1]]).sum())
        row["agreement"] = sum(a == b for a, b in zip(lsh, truth, strict=True)) / size
        row["disagreements"] = sum(a != b for a, b in zip(lsh, truth, strict=True))
        row["speedup"] = row["all_pairs_seconds"] / lsh_seconds
        row["close_pairs"] = sum(len(earlier) for earlier in close.values())
        results.append(row)
        print(f"n={size:>5}  accepted {row['accepted']:>5}  agreement {row['agreement']:.2%} "
              f"({row['disagreements']} differ)  index {lsh_seconds:7.2f}s "
              f"({lsh_rouge_calls} ROUGE-L)  all-pairs {row['all_pairs_seconds']:8.1f}s "
              f"({row['all_pairs_timing']}, {row['all_pairs_rouge_calls']} ROUGE-L)  "
              f"speedup {row['speedup']:.0f}x", flush=True)

    growth = {
        f"{method}_{cost}": growth_exponent(sizes, [r[f"{method}_{cost}"] for r in results])
        for method in ("lsh", "all_pairs") for cost in ("seconds", "rouge_calls")
    }
    summary = {"source": source, "threshold": args.threshold, "sizes": results, "growth_exponents": growth}
    # Wall time on a shared 2-core machine is noisy; the ROUGE-L counts are exact and say the same.
    print(f"growth from n={sizes[0]} to n={sizes[-1]} (cost ~ n^k): time k={growth['lsh_seconds']:.2f} "
          f"(index) vs k={growth['all_pairs_seconds']:.2f} (all-pairs); ROUGE-L computations "
          f"k={growth['lsh_rouge_calls']:.2f} vs k={growth['all_pairs_rouge_calls']:.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
