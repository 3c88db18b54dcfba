"""How diverse a set of instructions is, measured as the Self-Instruct paper measured it.

Self-Instruct (Wang et al. 2023, section 3.2) shows three things about the instructions it made:

* the ROUGE-L F1 of each generated instruction with its most similar seed instruction
  (Figure 3): mass near 1 means the model copied its seeds;
* the leading verbs and their direct objects (Figure 2): the paper parsed each instruction with
  the Berkeley Neural Parser and kept the verb closest to the root and its first direct noun
  object; 26,559 of 52,445 instructions had that structure, the rest were questions or more
  complex clauses;
* the lengths of instructions and outputs in words (Figure 4).

Distinct-n (Li et al. 2016: distinct n-grams over all n-grams) is added as one number per n.

The verb-object parse uses TextBlob's pattern tagger and chunker, whose English model ships inside
the ``textblob`` wheel: no parser on PyPI ships a dependency model with its weights (spaCy's,
Stanza's and benepar's are downloaded from their hubs). A chunker is not a dependency parser, so
the rule is the imperative one: an instruction that opens with a base-form verb (after an optional
"please") has that verb, and its object is the head noun of the first noun phrase after it that is
not inside a prepositional phrase ("Give me three examples of X" -> give, example). Questions and
instructions opening with anything else count as having no verb-object structure, as in the paper.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

from gen.novelty import rouge_tokens

_FIRST_SENTENCE = re.compile(r"(?<=[.!?])\s|\n")


def nearest_rouge_l(texts: Sequence[str], references: Sequence[str]) -> list[float]:
    """For each text, its highest ROUGE-L F1 with any reference (``rouge_score``'s tokens, no stemmer)."""
    if not references:
        return [0.0] * len(texts)
    return [float(row.max()) for row in _rouge_l_matrix(texts, references)]


def nearest_rouge_l_among(texts: Sequence[str], probes: Sequence[int]) -> list[float]:
    """For each ``texts[i]``, ``i`` in ``probes``, its highest ROUGE-L F1 with any other of ``texts``."""
    if len(texts) < 2:
        return []
    scores = _rouge_l_matrix([texts[i] for i in probes], texts)
    for row, i in enumerate(probes):
        scores[row, i] = 0.0
    return [float(row.max()) for row in scores]


def _rouge_l_matrix(texts: Sequence[str], references: Sequence[str]):
    """ROUGE-L F1 of every (text, reference) pair: ``2 LCS / (len + len)``, the F1 that
    ``rouge_score`` computes, with the LCS lengths from rapidfuzz's C++ (rouge_score's own LCS is
    pure Python: 400k pairs took minutes)."""
    import numpy as np
    from rapidfuzz.distance import LCSseq
    from rapidfuzz.process import cdist

    text_tokens = [rouge_tokens(t) for t in texts]
    reference_tokens = [rouge_tokens(r) for r in references]
    lcs = cdist(text_tokens, reference_tokens, scorer=LCSseq.similarity, dtype=np.int32, workers=-1)
    lengths = np.add.outer([len(t) for t in text_tokens], [len(r) for r in reference_tokens])
    return np.divide(2.0 * lcs, lengths, out=np.zeros(lcs.shape), where=lengths > 0)


def verb_object(instruction: str) -> tuple[str, str | None] | None:
    """The instruction's leading verb and its direct object noun, lowercased and singular
    (``("write", "poem")``, ``("find", None)``); None when it does not open with a verb."""
    from textblob.en import parse  # loads the tagger's lexicon: only when asked

    first_sentence = _FIRST_SENTENCE.split(instruction.strip(), maxsplit=1)[0]
    if not first_sentence:
        return None
    words = [token.split("/") for token in parse(first_sentence).split("\n")[0].split(" ")]
    if words and words[0][0].lower() == "please":
        words = words[1:]
    if not words or words[0][1] != "VB":
        return None
    verb = words[0][0].lower()
    noun = None
    for position, (word, tag, chunk, pnp) in enumerate(words[1:], start=1):
        if pnp != "O" or not chunk.endswith("-NP"):
            continue
        phrase_end = position + 1
        while phrase_end < len(words) and words[phrase_end][2] == "I-NP":
            phrase_end += 1
        nouns = [(w.lower(), t) for w, t, _, _ in words[position:phrase_end] if t.startswith("NN")]
        if nouns:
            head, tag = nouns[-1]
            noun = _singular(head) if tag == "NNS" else head  # "chess" is not a plural
            break
    return verb, noun


def _singular(noun: str) -> str:
    from textblob import Word

    return Word(noun).singularize()


def verb_object_counts(instructions: Iterable[str]) -> tuple[Counter[tuple[str, str | None]], int]:
    """Counts of (verb, object) pairs, and how many instructions had no verb-object structure."""
    pairs: Counter[tuple[str, str | None]] = Counter()
    without = 0
    for instruction in instructions:
        pair = verb_object(instruction)
        if pair is None:
            without += 1
        else:
            pairs[pair] += 1
    return pairs, without


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct n-grams of lowercased words over all n-grams, across ``texts`` (Li et al. 2016)."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        words = text.lower().split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else 0.0
