"""Self-Instruct's novelty check, without comparing a candidate with the whole pool.

Self-Instruct and Alpaca keep a new instruction only if its ROUGE-L F1 (package ``rouge_score``,
no stemmer) with every instruction already in the pool is at most 0.7. They compute it against
the whole pool, so the cost grows with the square of the data (ANCHORS.md, "Stanford Alpaca").

:class:`NoveltyIndex` gives the same decisions by scoring only a few candidates:

1. A pair with ROUGE-L F1 ``f`` has multiset word Jaccard at least ``f / (2 - f)``: the LCS is a
   common sub-multiset, so overlap >= LCS, and F1 = 2 LCS / (m + n). At ``f = 0.7`` that floor is
   0.538. MinHash/LSH over the words (each occurrence numbered, so the sketch estimates multiset
   Jaccard) with bands chosen to catch pairs at that floor with probability ``1 - miss_probability``
   finds the candidates.
2. Each candidate's multiset overlap gives an upper bound on its F1 (``2 overlap / (m + n)``);
   candidates are scored best bound first and scoring stops when no bound can beat the best score.
3. The exact ROUGE-L F1 is the ``rouge_score`` package's own LCS F1 on its own tokens, as the
   papers compute it.

A pair above the threshold is missed only if LSH misses it (probability at most
``miss_probability`` per pair); every other step is exact. ``benchmarks/bench_novelty.py``
measures agreement and speed against the all-pairs check.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH
from rouge_score import rouge_scorer

DEFAULT_THRESHOLD = 0.7  # Self-Instruct and Alpaca: keep if ROUGE-L F1 <= 0.7 with every pool instruction

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_tokens(text: str) -> list[str]:
    """``rouge_score``'s tokens for ``text`` (lowercase alphanumeric words, no stemming)."""
    return _SCORER._tokenizer.tokenize(text)


def rouge_l(tokens: list[str], other_tokens: list[str]) -> float:
    """ROUGE-L F1 of two token lists, by ``rouge_score``'s own LCS (symmetric)."""
    return rouge_scorer._score_lcs(tokens, other_tokens).fmeasure


def jaccard_floor(threshold: float) -> float:
    """The least multiset word Jaccard of a pair whose ROUGE-L F1 exceeds ``threshold``."""
    return threshold / (2 - threshold)


def lsh_bands(threshold: float, rows: int, miss_probability: float) -> int:
    """Bands of ``rows`` hashes that make a pair at the Jaccard floor a candidate with
    probability ``1 - miss_probability``: solves ``(1 - floor**rows) ** bands = miss``."""
    per_band = jaccard_floor(threshold) ** rows
    return math.ceil(math.log(miss_probability) / math.log1p(-per_band))


@dataclass(frozen=True, slots=True)
class Nearest:
    """The most similar pool instruction among the candidates, and its ROUGE-L F1 (0.0, None
    when no pool instruction shares enough words to be a candidate)."""

    text: str | None
    rouge_l: float


class NoveltyIndex:
    """A growing pool of instructions that answers "what is the most similar one to this text?"."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, rows: int = 4,
                 miss_probability: float = 1e-4, seed: int = 1):
        self.threshold = threshold
        bands = lsh_bands(threshold, rows, miss_probability)
        self._lsh = MinHashLSH(num_perm=bands * rows, params=(bands, rows))
        self._blank = MinHash(num_perm=bands * rows, seed=seed)
        self._texts: list[str] = []
        self._tokens: list[list[str]] = []
        self._counts: list[Counter[str]] = []
        self.rouge_calls = 0  # exact ROUGE-L computations so far, for benchmarks and stats

    def __len__(self) -> int:
        return len(self._texts)

    def nearest(self, text: str) -> Nearest:
        tokens = rouge_tokens(text)
        if not tokens or not self._texts:
            return Nearest(None, 0.0)
        counts = Counter(tokens)
        bounded = []
        for key in self._lsh.query(self._sketch(tokens)):
            overlap = sum((counts & self._counts[key]).values())
            bounded.append((2 * overlap / (len(tokens) + len(self._tokens[key])), key))
        bounded.sort(reverse=True)
        best_key, best_score = None, 0.0
        for bound, key in bounded:
            if bound <= best_score:
                break  # no remaining candidate can score higher
            self.rouge_calls += 1
            score = rouge_l(tokens, self._tokens[key])
            if score > best_score:
                best_key, best_score = key, score
        return Nearest(None if best_key is None else self._texts[best_key], best_score)

    def is_novel(self, nearest: Nearest) -> bool:
        return nearest.rouge_l <= self.threshold

    def add(self, text: str) -> None:
        """Put ``text`` in the pool (whether or not it is novel: seeds always join)."""
        tokens = rouge_tokens(text)
        key = len(self._texts)
        self._texts.append(text)
        self._tokens.append(tokens)
        self._counts.append(Counter(tokens))
        if tokens:  # a text with no words scores 0 with everything: never a candidate
            self._lsh.insert(key, self._sketch(tokens), check_duplication=False)

    def _sketch(self, tokens: list[str]) -> MinHash:
        seen: Counter[str] = Counter()
        shingles = []
        for token in tokens:  # number repeats so the sketch estimates multiset Jaccard
            seen[token] += 1
            shingles.append(f"{token}\x00{seen[token]}".encode())
        sketch = self._blank.copy()
        sketch.update_batch(shingles)
        return sketch
