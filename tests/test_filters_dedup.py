"""Global dedup with real datasketch and real Ray index actors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydantic import TypeAdapter

from filters import FilterSpec, build_chain
from filters.dedup import MAX_SHINGLES, Dedup, DedupConfig, IndexShard, compute_signatures
from filters.dedup import jaccard as set_jaccard
from filters.text import normalize, shingle_hashes
from gen.records import content_id, instruction_of, to_table

SHARED_P3 = Path(__file__).resolve().parents[2] / "shared" / "data" / "p3_sample"

VOCABULARY = [f"{syllable}{suffix}" for syllable in ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi")
              for suffix in ("", "n", "ra", "so", "tel", "dum", "pix", "bar")]


@pytest.fixture
def dedup(ray_session):
    filters = []

    def build(**settings) -> Dedup:
        filters.append(Dedup(DedupConfig(**settings)))
        return filters[-1]

    yield build
    for f in filters:
        f.close()


def record(record_id: str, instruction: str, replica: int = 0) -> dict:
    return {"id": record_id, "messages": [{"role": "user", "content": instruction}], "metadata": {"replica": replica}}


def text(seed: int, words: int = 100) -> list[str]:
    return random.Random(seed).choices(VOCABULARY, k=words)


def mutate(words: list[str], changes: int, seed: int) -> list[str]:
    """``words`` with ``changes`` positions, evenly spread, replaced by a word not in the vocabulary."""
    out = list(words)
    step = len(words) // changes
    for i in range(changes):
        out[i * step + random.Random(seed + i).randrange(step)] = f"changed{seed}x{i}"
    return out


def jaccard(a: list[str], b: list[str], n: int = 5) -> float:
    grams_a = {tuple(a[i : i + n]) for i in range(len(a) - n + 1)}
    grams_b = {tuple(b[i : i + n]) for i in range(len(b) - n + 1)}
    return len(grams_a & grams_b) / len(grams_a | grams_b)


def reasons(dropped: list[dict]) -> dict[str, tuple[str, str]]:
    return {r["id"]: (r["_drop"]["reason"], r["_drop"]["evidence"]["duplicate_of"]) for r in dropped}


def test_planted_duplicates_across_batches_and_replicas(dedup):
    f = dedup(index_shards=3)
    originals = {f"orig{i}": text(i) for i in range(20)}
    near = {f"near{i}": mutate(originals[f"orig{i}"], 2, seed=i) for i in range(10)}
    far = {f"far{i}": mutate(originals[f"orig{i}"], 12, seed=i) for i in range(10, 20)}
    assert all(jaccard(originals[k.replace("near", "orig")], v) > 0.8 for k, v in near.items())
    assert all(jaccard(originals[k.replace("far", "orig")], v) < 0.45 for k, v in far.items())

    # Two replicas' outputs interleave over several commits; duplicates arrive in later commits.
    commits = [
        [record(k, " ".join(v), replica=i % 2) for i, (k, v) in enumerate(originals.items()) if i < 10],
        [record(k, " ".join(v), replica=i % 2) for i, (k, v) in enumerate(originals.items()) if i >= 10],
        [record(k, " ".join(v), replica=1) for k, v in near.items()]
        + [record(k, " ".join(v), replica=0) for k, v in far.items()],
    ]
    kept_ids, dropped = [], []
    for batch in commits:
        kept, rejected = f(batch)
        kept_ids += [r["id"] for r in kept]
        dropped += rejected
    assert reasons(dropped) == {k: ("near_duplicate", k.replace("near", "orig")) for k in near}
    assert set(kept_ids) == set(originals) | set(far)
    assert all(r["_drop"]["evidence"]["similarity"] >= 0.7 for r in dropped)
    assert f.stats()["dropped"] == {"near_duplicate": 10}


def test_within_batch_first_wins_and_exact_pass(dedup):
    f = dedup()
    words = text(100)
    batch = [
        record("first", " ".join(words)),
        record("shouting", " ".join(words).upper() + " !!!"),  # same normalised text
        record("near", " ".join(mutate(words, 2, seed=7))),
        record("other", " ".join(text(101))),
    ]
    kept, dropped = f(batch)
    assert [r["id"] for r in kept] == ["first", "other"]
    assert reasons(dropped) == {"shouting": ("exact_duplicate", "first"), "near": ("near_duplicate", "first")}


def test_short_empty_newline_and_non_utf8_texts(dedup):
    f = dedup()
    batch = [
        record("short", "Name three colors."),
        record("short_again", "name three colors"),
        record("short_other", "Name three animals."),
        record("empty", ""),
        record("empty_again", ""),
        record("newlines", "line one\nline two\n\nline three"),
        record("bad_bytes", b"caf\xe9 au lait".decode("utf-8", "surrogateescape")),
    ]
    kept, dropped = f(batch)
    assert reasons(dropped) == {"short_again": ("exact_duplicate", "short"), "empty_again": ("exact_duplicate", "empty")}
    assert {r["id"] for r in kept} == {"short", "short_other", "empty", "newlines", "bad_bytes"}
    assert all(isinstance(r["minhash"], bytes) for r in batch)


def test_resume_and_against_reload_signatures_without_rehashing(dedup, tmp_path):
    first = dedup()
    originals = [record(f"orig{i}", " ".join(text(200 + i))) for i in range(30)]
    kept, _ = first(originals)
    (tmp_path / "data").mkdir()
    pq.write_table(to_table(kept), tmp_path / "data" / "part-00000.parquet")

    duplicates = [record(f"dup{i}", " ".join(mutate(text(200 + i), 2, seed=i))) for i in range(5)]
    resumed = dedup()
    resumed.observe_committed(pq.read_table(tmp_path / "data" / "part-00000.parquet").to_pylist())
    against = dedup(against=[str(tmp_path)])
    for f in (resumed, against):
        kept, dropped = f([dict(r) for r in duplicates])
        assert not kept
        assert reasons(dropped) == {f"dup{i}": ("near_duplicate", f"orig{i}") for i in range(5)}
        assert f.stats()["signatures_reloaded"] == 30
        assert f.stats()["signatures_rehashed"] == 0

    # Signatures made with other settings are not comparable: those records are re-hashed.
    other_settings = dedup(against=[str(tmp_path)], num_perm=64, bands=16)
    assert other_settings.stats()["signatures_rehashed"] == 30
    _, dropped = other_settings([dict(r) for r in duplicates])
    assert len(dropped) == 5


def test_index_shard_gives_back_ids_and_shingle_sets_across_batches():
    """The actor's class in this process: sdg's hex ids and other ids, stored in runs of several
    inserts, come back with their shingle sets, and each exact key names its first record."""
    config = DedupConfig(index_shards=1)
    shard = IndexShard(0, 1, config.ids_per_bucket, config.bands)
    texts = [" ".join(text(seed, words=12 + seed)) for seed in range(9)]
    ids = [content_id(n) if n % 2 else f"seed-{n}-é" for n in range(len(texts))]
    signatures = compute_signatures(config, texts)
    for first, last in ((0, 3), (3, 7), (7, 9)):
        shard.insert(np.arange(first, last), signatures.band_keys[first:last], signatures.exact_keys[first:last],
                     [(ids[n], signatures.shingles[n].tobytes()) for n in range(first, last)])
    asked = [8, 0, 5, 3, 4]
    assert shard.records(asked) == [(ids[n], signatures.shingles[n].tobytes()) for n in asked]
    exact, queries, numbers = shard.candidates(signatures.band_keys, signatures.exact_keys)
    assert exact.tolist() == list(range(len(texts)))
    assert set(zip(queries.tolist(), numbers.tolist(), strict=True)) >= {(n, n) for n in range(len(texts))}
    assert shard.size()["records"] == len(texts)


def test_a_bucket_key_met_in_another_band_proposes_no_candidate():
    """Bands are looked up in their own tables: a key indexed for band 0 is a candidate of a record
    with that key in band 0, never of one with that key in band 1."""
    shard = IndexShard(0, 1, ids_per_bucket=8, bands=2)
    key, other, another = (np.uint64(k << 40) for k in (0xDEADBE, 0x123456, 0x654321))
    shard.insert(np.array([0]), np.array([[key, other]]), np.array([np.uint64(11)]), [("a", b"")])
    queried = np.array([[another, key], [key, another]])  # the key in band 1; in band 0
    exact, queries, numbers = shard.candidates(queried, np.array([np.uint64(12), np.uint64(13)]))
    assert exact.tolist() == [-1, -1]
    assert list(zip(queries.tolist(), numbers.tolist(), strict=True)) == [(1, 0)]


def test_a_shard_without_bands_still_answers_its_exact_keys():
    """More index_shards than bands leaves a shard with no band table: it answers exact keys only."""
    shard = IndexShard(0, 1, ids_per_bucket=8, bands=0)
    shard.insert(np.array([0]), np.empty((1, 0), np.uint64), np.array([np.uint64(5)]), [("a", b"")])
    exact, queries, numbers = shard.candidates(np.empty((2, 0), np.uint64), np.array([np.uint64(5), np.uint64(6)]))
    assert exact.tolist() == [0, -1]
    assert len(queries) == len(numbers) == 0


def test_shingle_hashes_match_string_ngrams():
    """Equal n-grams hash equally across texts, different ones differently, in word order."""
    texts = [" ".join(text(300 + i, words=60)) for i in range(50)] + ["one two", ""]
    normalized = [normalize(t) for t in texts]
    hashes, bounds = shingle_hashes(normalized, 5)
    by_hash: dict[int, set[tuple[str, ...]]] = {}
    for i, t in enumerate(normalized):
        words = t.split()
        grams = [tuple(words[j : j + 5]) for j in range(len(words) - 4)] or ([tuple(words)] if words else [])
        assert bounds[i + 1] - bounds[i] == len(grams)
        for gram, value in zip(grams, hashes[bounds[i] : bounds[i + 1]].tolist(), strict=True):
            by_hash.setdefault(value, set()).add(gram)
    assert all(len(grams) == 1 for grams in by_hash.values())
    assert len({g for grams in by_hash.values() for g in grams}) == len(by_hash)


def test_exact_jaccard_decides_at_the_threshold(dedup):
    """100 distinct words have 96 5-grams; appending m new words adds m shingles and removes none,
    so the pair's exact Jaccard is 96 / (96 + m): 41 words is 0.7007 (dropped), 42 is 0.6957 (kept),
    far inside the 128-permutation estimate's error (0.04), which no longer decides."""
    base = [f"base{i}" for i in range(100)]
    extra = [f"extra{i}" for i in range(42)]
    above, below = dedup(), dedup()
    kept, dropped = above([record("base", " ".join(base)), record("above", " ".join(base + extra[:41]))])
    assert [r["id"] for r in kept] == ["base"]
    assert dropped[0]["_drop"]["evidence"] == {"duplicate_of": "base", "similarity": round(96 / 137, 4)}
    kept, dropped = below([record("base", " ".join(base)), record("below", " ".join(base + extra))])
    assert [r["id"] for r in kept] == ["base", "below"] and not dropped


def test_jaccard_of_cut_shingle_sets_compares_the_range_both_cover():
    """Sets longer than MAX_SHINGLES keep their smallest hashes; below the smaller cut-off both are
    complete, so their Jaccard there is a sample of the union's shingles (exact for short sets)."""
    rng = np.random.default_rng(0)
    universe = rng.choice(1 << 32, size=12_000, replace=False).astype(np.uint32)
    a, b = np.sort(universe[:8000]), np.sort(universe[2000:10_000])  # true Jaccard 6000 / 10000
    estimate = set_jaccard(a[:MAX_SHINGLES], b[:MAX_SHINGLES])
    assert abs(estimate - 0.6) < 0.04  # 3.5 standard errors of a 2,048-shingle sample
    short_a, short_b = np.sort(universe[:300]), np.sort(universe[100:400])
    assert set_jaccard(short_a, short_b) == 200 / 400


def test_signature_estimates_track_exact_jaccard():
    base = text(400, words=200)
    variants = [mutate(base, changes, seed=changes) for changes in (1, 3, 6, 10, 20)]
    signatures = compute_signatures(DedupConfig(), [" ".join(w) for w in [base, *variants]]).hashvalues
    for row, words in zip(signatures[1:], variants):
        estimate = float(np.mean(row == signatures[0]))
        assert abs(estimate - jaccard(base, words)) < 0.12  # 3 standard errors at 128 permutations


def chain_input() -> list[dict]:
    """Mixed records: good, broken in each way, duplicated; plus the real P3 sample when present."""
    good = "Give three tips for staying healthy in winter."
    answer = "Sleep eight hours, eat vegetables every day, and walk outside when the sun is up."
    records = [
        {"id": "good", "messages": [{"role": "user", "content": good}, {"role": "assistant", "content": answer}]},
        {"id": "dup", "messages": [{"role": "user", "content": good.upper()}, {"role": "assistant", "content": answer}]},
        {"id": "french", "messages": [{"role": "user", "content": "Donnez trois conseils pour rester en bonne santé."},
                                      {"role": "assistant", "content": "Dormez, mangez des légumes et marchez."}]},
        {"id": "picture", "method": "self_instruct>respond",  # a machine-written instruction
         "messages": [{"role": "user", "content": "Draw a picture of a healthy breakfast."},
                      {"role": "assistant", "content": answer}]},
        {"id": "cut", "finish_reason": "length", "messages": [{"role": "user", "content": "Explain winter health."},
                                                              {"role": "assistant", "content": "Sleep eight"}]},
        {"id": "empty", "messages": [{"role": "user", "content": ""}]},
    ]
    for path in sorted(SHARED_P3.glob("*.jsonl"))[:8]:
        for n, line in enumerate(path.read_text().splitlines()):
            row = json.loads(line)
            records.append({"id": f"{path.stem}-{n}", "messages": [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row["completion"].removesuffix("<|endoftext|>")}]})
    return records


def test_whole_chain_kept_plus_rejected_is_everything(ray_session):
    specs = TypeAdapter(list[FilterSpec]).validate_python([
        {"type": "response_rules"}, {"type": "instruction_rules"}, {"type": "refusal"},
        {"type": "gopher_repetition"}, {"type": "gopher_quality"}, {"type": "language_id"},
        {"type": "dedup"},
    ])
    chain = build_chain(specs)
    records = chain_input()
    kept, rejected = [], []
    try:
        for start in range(0, len(records), 300):
            k, r = chain(records[start : start + 300])
            kept += k
            rejected += r
        stats = chain.stats()
    finally:
        chain.close()
    assert sorted(r["id"] for r in kept + rejected) == sorted(r["id"] for r in records)
    assert len(to_table(kept)) + len(to_table(rejected)) == len(records)
    drops = {r["id"]: (r["_drop"]["filter"], r["_drop"]["reason"]) for r in rejected}
    assert drops["dup"] == ("dedup", "exact_duplicate")
    assert drops["french"] == ("language_id", "lang_not_allowed")
    assert drops["picture"] == ("instruction_rules", "instruction_blacklisted_word")
    assert drops["cut"] == ("response_rules", "response_truncated")
    assert drops["empty"] == ("response_rules", "response_empty")
    assert "good" not in drops
    assert sum(sum(s["dropped"].values()) for s in stats.values()) == len(rejected)
    assert stats["dedup"]["kept"] == len(kept)
    assert all(r["lang"] and r["minhash"] for r in kept)
    assert all(instruction_of(r) for r in kept)
