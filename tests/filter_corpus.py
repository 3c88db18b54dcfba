"""A synthetic Alpaca corpus for ``sdg filter``: English instructions and answers made from a
vocabulary, with the things the filters are there for mixed in, at fixed shares and positions:
near-duplicates of earlier records (one word changed), exact repeats, degenerate answers (empty,
a looping sentence, punctuation, a refusal) and answers in another language.

The same ``count`` and ``seed`` always give the same rows (tests compare two runs over it;
``benchmarks/bench_filter_scale.py`` times the filters over 200k of them).
"""

from __future__ import annotations

import random
from pathlib import Path

NOUNS = ("river", "garden", "market", "teacher", "engine", "village", "letter", "budget", "forest", "bridge",
         "harvest", "museum", "network", "kitchen", "journey", "library", "hospital", "season", "factory",
         "painting", "student", "ocean", "election", "recipe", "mountain", "contract", "orchestra", "island",
         "battery", "festival", "newspaper", "planet", "customer", "meadow", "harbour", "telescope")
VERBS = ("explain", "describe", "compare", "summarise", "improve", "plan", "organise", "protect", "measure",
         "review", "design", "repair", "predict", "translate", "schedule", "present", "support", "test")
ADJECTIVES = ("quiet", "busy", "ancient", "modern", "small", "remote", "careful", "bright", "steady", "local",
              "seasonal", "reliable", "narrow", "generous", "patient", "rural", "coastal", "famous")
CONNECTIVES = ("because", "although", "while", "after", "before", "since", "unless", "whenever")

OTHER_LANGUAGE = ("Der Fluss fließt im Frühling schneller, weil der Schnee in den Bergen schmilzt und das "
                  "Wasser in die Täler bringt.", "La bibliothèque du village ouvre le matin et ferme tard le "
                  "soir pour les étudiants qui préparent leurs examens.")

# Shares of the corpus, each a fixed pattern of record positions so a count of any size has them.
NEAR_DUPLICATE_EVERY = 10  # one record in ten repeats an earlier one with one word changed
EXACT_REPEAT_EVERY = 50
DEGENERATE_EVERY = 12
OTHER_LANGUAGE_EVERY = 40


def _sentence(rng: random.Random) -> str:
    return (f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} will {rng.choice(VERBS)} the "
            f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(CONNECTIVES)} the "
            f"{rng.choice(NOUNS)} is {rng.choice(ADJECTIVES)} and {rng.choice(ADJECTIVES)}.")


def _fresh(rng: random.Random) -> dict[str, str]:
    instruction = (f"{rng.choice(VERBS).capitalize()} how the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} "
                   f"near the {rng.choice(NOUNS)} affects the {rng.choice(NOUNS)} of the "
                   f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}.")
    return {"instruction": instruction, "input": "",
            "output": " ".join(_sentence(rng) for _ in range(rng.randint(3, 5)))}


def _degenerate(row: dict[str, str], kind: int) -> dict[str, str]:
    first = row["output"].split(". ")[0].rstrip(".") + "."
    outputs = ("", " ".join([first] * 12), "... ?!", "I'm sorry, but I can't help with that.")
    return {**row, "output": outputs[kind % len(outputs)]}


def corpus_rows(count: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    for number in range(count):
        if number and number % EXACT_REPEAT_EVERY == 0:
            row = dict(rows[rng.randrange(len(rows))])
        elif number and number % NEAR_DUPLICATE_EVERY == 0:
            earlier = rows[rng.randrange(len(rows))]
            words = earlier["output"].split() or [rng.choice(NOUNS)]
            words[rng.randrange(len(words))] = rng.choice(NOUNS)
            row = {**earlier, "output": " ".join(words)}
        else:
            row = _fresh(rng)
        if number % DEGENERATE_EVERY == 5:
            row = _degenerate(row, number // DEGENERATE_EVERY)
        elif number % OTHER_LANGUAGE_EVERY == 7:
            row = {**row, "output": rng.choice(OTHER_LANGUAGE)}
        rows.append(row)
    return rows


def write_parquet(path: Path, count: int, seed: int = 0, row_group_rows: int = 10_000) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(corpus_rows(count, seed)), path, row_group_size=row_group_rows)
    return path


def write_jsonl(path: Path, count: int, seed: int = 0) -> Path:
    import json

    path.write_text("".join(json.dumps(row) + "\n" for row in corpus_rows(count, seed)))
    return path
