"""The Self-Instruct paper's diversity measures (gen/diversity.py) on instructions with known answers."""

import random

import pytest

from gen.diversity import distinct_n, nearest_rouge_l, nearest_rouge_l_among, verb_object, verb_object_counts
from gen.novelty import rouge_l, rouge_tokens


@pytest.mark.parametrize("instruction, expected", [
    ("Write a poem about the sea.", ("write", "poem")),
    ("Give me three examples of renewable energy sources.", ("give", "example")),
    ("Please generate a list of 5 names for a cat.", ("generate", "list")),
    ("Rewrite the given sentence in passive voice.", ("rewrite", "sentence")),
    ("Suggest some famous movies. Then rank them.", ("suggest", "movie")),
    ("Find the odd one out.", ("find", None)),
    ("What is the capital of France?", None),
    ("Is the following number even or odd? 347", None),
    ("", None),
])
def test_verb_object_of_imperatives_only(instruction, expected):
    assert verb_object(instruction) == expected


def test_verb_object_counts_tally_pairs_and_instructions_without_one():
    pairs, without = verb_object_counts(["Write a poem.", "Write poems about cats.", "Why is the sky blue?"])
    assert pairs == {("write", "poem"): 2}
    assert without == 1


def test_distinct_n_counts_ngrams_across_texts():
    texts = ["the cat sat", "the cat ran"]
    assert distinct_n(texts, 1) == 4 / 6
    assert distinct_n(texts, 2) == 3 / 4
    assert distinct_n([], 2) == 0.0


def test_nearest_rouge_l_is_the_best_match_over_references():
    scores = nearest_rouge_l(["write a poem about the sea", "unrelated words here"],
                             ["write a poem about the moon", "compose a song"])
    assert scores[0] == pytest.approx(5 / 6)  # LCS 5 of 6 words on both sides
    assert scores[1] == 0.0


def test_all_pairs_rouge_l_equals_rouge_scores_own():
    rng = random.Random(3)
    vocabulary = [f"w{i}" for i in range(40)]
    texts = [" ".join(rng.choices(vocabulary, k=rng.randint(1, 25))) for _ in range(60)]
    expected = [max(rouge_l(rouge_tokens(texts[i]), rouge_tokens(texts[j])) for j in range(60) if j != i)
                for i in range(60)]
    assert nearest_rouge_l_among(texts, range(60)) == pytest.approx(expected)
    assert nearest_rouge_l(texts[:10], texts[10:]) == pytest.approx(
        [max(rouge_l(rouge_tokens(t), rouge_tokens(r)) for r in texts[10:]) for t in texts[:10]])
