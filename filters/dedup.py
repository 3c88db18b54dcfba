"""Global dedup: an exact pass on the normalised text, then MinHash LSH near-dedup decided by the
exact Jaccard of the shingle sets.

How a batch is judged (in the driver, at commit time, in commit order):

1. Each record's judged text is normalised (:func:`filters.text.normalize`) and hashed (exact
   key), and its word n-gram shingles are hashed for the whole batch at once
   (:func:`shingle_hashes`). Each record's shingle set (sorted unique 32-bit hashes) and its
   MinHash signature (:func:`minhash`) come from those hashes, with no n-gram string built.
2. Each signature is cut into ``bands`` bands; each band is hashed to a 64-bit bucket key.
3. The index is global to the run and lives in ``index_shards`` Ray actors: band ``b`` lives on
   shard ``b % index_shards``, a record's shingle set on the shard its id hashes to. The driver
   asks every shard at once which committed records share an exact key or a bucket with each
   record, fetches those candidates' shingle sets, and keeps a record unless an earlier one
   (committed, or earlier in this batch) has the same exact key or an exact Jaccard >= ``threshold``.
4. The kept records' keys and shingle sets are inserted, so the next batch (from any shard or
   replica) is judged against them: the first committed record of a cluster is the one kept.

LSH only proposes candidates; the exact Jaccard of the two shingle sets decides (:func:`jaccard`),
so there is no estimation error at the threshold. The bands are therefore set for candidate recall
~1 at the threshold (32 bands of 4 rows: a pair at Jaccard 0.7 is a candidate with probability
1 - (1 - 0.7^4)^32 = 0.9998), and the false candidates that costs are removed by the exact check.

Every judged record gets its signature and shingle set in ``record["minhash"]``
(:func:`pack_signature`), which the sink writes to the shard. A resumed run (``observe_committed``)
and ``against: [DIR, ...]`` reload the index from that column without re-hashing text; only
records whose column was made with other settings (or an older format) are re-hashed.
"""

from __future__ import annotations

import functools
import itertools
import struct
from typing import Any, Literal

import numpy as np
import xxhash
from pydantic import Field, field_validator, model_validator

from filters.base import Drop, Filter, FilterConfig, StateLost, Verdict
from filters.text import PRIME, TextField, fmix64, normalize, shingle_hashes, text_of
from gen.records import Record, is_dropped
from gen.sink import read_batches
from gen.storage import Location


class DedupConfig(FilterConfig):
    type: Literal["dedup"] = "dedup"
    # Self-Instruct and Alpaca judge novelty on the instruction: two answers to one question are
    # one task. "both" dedups whole conversations, datatrove's document-level choice.
    text: TextField = "instruction"
    # 5-word shingles: datatrove and text-dedup (ANCHORS, MinHash near-dedup defaults).
    ngram: int = Field(5, ge=1)
    # datasketch's default 128 permutations (datatrove 112, text-dedup 240-250), as 32 bands of 4
    # rows: only candidate recall matters (the exact Jaccard decides), and a pair at 0.7 is a
    # candidate with probability 0.9998, at 0.65 with 0.9993.
    num_perm: int = Field(128, ge=1)
    bands: int = Field(32, ge=1)
    # text-dedup's 0.7; datatrove's 14 x 8 bands aim at ~0.72.
    threshold: float = Field(0.7, gt=0, le=1)
    seed: int = 1
    # Ray actors holding the index; small by default on a 2-core machine, raise it with the data.
    index_shards: int = Field(2, ge=1)
    # Kept records remembered per LSH bucket. With one, a near-duplicate of a kept record is missed
    # when every bucket they share was claimed first by other, merely similar, records; a few ids
    # per bucket close that gap at a bounded cost in memory and exact comparisons.
    ids_per_bucket: int = Field(8, ge=1)
    # Output directories (paths or URIs) of earlier runs whose kept records seed the index.
    against: list[str] = []
    # One call to the index actors. Past it the index counts as lost and is rebuilt from the
    # committed shards (as when an actor dies), so a stuck actor never hangs the run.
    index_timeout_s: float = Field(300.0, gt=0)

    @model_validator(mode="after")
    def _bands_divide_perms(self) -> DedupConfig:
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm ({self.num_perm}) must be a multiple of bands ({self.bands})")
        return self

    @field_validator("against")
    @classmethod
    def _against_earlier_runs(cls, dirs: list[str]) -> list[str]:
        for index, run_dir in enumerate(dirs):
            kept = Location.of(run_dir).child("data")
            if not kept.files(".parquet"):
                raise ValueError(f"against.{index}: no kept shards in {kept} "
                                 "(not an sdg output dir, or one that kept nothing)")
        return dirs


# ---------------------------------------------------------------- signatures and their storage

# A record's shingle set keeps at most this many hashes, its smallest: 8 kB, a ~2,000-word text.
# Two sets are compared below the smaller cut-off (:func:`jaccard`), which is exact when neither
# was cut and, when one was, an estimate from a consistent sample of >= 2,048 shingles of the
# union (standard error <= 0.01 at 0.7, against 0.04 for 128 permutations).
MAX_SHINGLES = 2048

# Format 2 ("sdg2"): header, signature, shingle set. Format 1 ("sdgM", signature only) and other
# settings do not unpack, so those records are re-hashed from their text.
_MAGIC = b"sdg2"
_HEADER = struct.Struct("<4sIQI")  # magic, settings fingerprint, exact key, shingles stored


def settings_fingerprint(config: DedupConfig) -> int:
    """What makes two signatures comparable: same text, shingles, permutations."""
    return xxhash.xxh32_intdigest(f"{config.text}|{config.ngram}|{config.num_perm}|{config.seed}".encode())


def pack_signature(fingerprint: int, exact_key: int, hashvalues: np.ndarray, shingles: np.ndarray) -> bytes:
    return (_HEADER.pack(_MAGIC, fingerprint, exact_key, len(shingles))
            + hashvalues.astype("<u4").tobytes() + shingles.astype("<u4").tobytes())


def unpack_signature(blob: bytes | None, fingerprint: int,
                     num_perm: int) -> tuple[int, np.ndarray, np.ndarray] | None:
    """(exact key, hash values, shingle set) from a stored column, or None if it was made differently."""
    if not blob or len(blob) < _HEADER.size:
        return None
    magic, stored_fingerprint, exact_key, count = _HEADER.unpack_from(blob)
    if magic != _MAGIC or stored_fingerprint != fingerprint or len(blob) != _HEADER.size + 4 * (num_perm + count):
        return None
    values = np.frombuffer(blob, dtype="<u4", offset=_HEADER.size).astype(np.uint32)
    return exact_key, values[:num_perm], values[num_perm:]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two shingle sets (sorted, unique, each its MAX_SHINGLES smallest)."""
    cut = [s[-1] for s in (a, b) if len(s) == MAX_SHINGLES]
    if cut:  # compare on the hash range both sets still cover
        a, b = a[a <= min(cut)], b[b <= min(cut)]
    # Where each of a would sit in b: a few array operations, where np.intersect1d sorts both again.
    shared = int(np.count_nonzero(b[np.minimum(np.searchsorted(b, a), len(b) - 1)] == a)) if len(b) else 0
    union = len(a) + len(b) - shared
    return shared / union if union else 1.0


class Signatures:
    """Exact keys, MinHash values, LSH bucket keys and shingle sets of one batch."""

    def __init__(self, exact_keys: np.ndarray, hashvalues: np.ndarray, band_keys: np.ndarray,
                 shingles: list[np.ndarray]):
        self.exact_keys = exact_keys  # (records,) uint64
        self.hashvalues = hashvalues  # (records, num_perm) uint32
        self.band_keys = band_keys  # (records, bands) uint64
        self.shingles = shingles  # per record: sorted unique uint32 shingle hashes, <= MAX_SHINGLES

    @classmethod
    def of(cls, exact_keys: np.ndarray, hashvalues: np.ndarray, shingles: list[np.ndarray], bands: int) -> Signatures:
        # Bucket key of band b: the band's values folded into 64 bits, salted with b, so equal
        # values in different bands never share a bucket.
        rows = hashvalues.reshape(len(hashvalues), bands, -1).astype(np.uint64)
        keys = np.broadcast_to(np.arange(bands, dtype=np.uint64), rows.shape[:2]).copy()
        for row in range(rows.shape[2]):
            keys = fmix64(keys * PRIME + rows[:, :, row])
        return cls(exact_keys, hashvalues, keys, shingles)

    def take(self, indices: list[int]) -> Signatures:
        return Signatures(self.exact_keys[indices], self.hashvalues[indices], self.band_keys[indices],
                          [self.shingles[i] for i in indices])


@functools.cache
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Multipliers (odd) and offsets of the hash functions x -> (a * x + b) mod 2**64 >> 32."""
    a, b = np.random.default_rng(seed).integers(0, 1 << 64, size=(2, num_perm), dtype=np.uint64, endpoint=False)
    return a | np.uint64(1), b


# Shingles hashed by all permutations at once in minhashes(): 8,192 x 128 products are 8 MB.
_CHUNK_SHINGLES = 8192


def minhashes(shingles: np.ndarray, bounds: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures (records x num_perm, uint32) of sets of uint32 shingle hashes; set ``i``
    is ``shingles[bounds[i]:bounds[i + 1]]``.

    Each of the ``num_perm`` hash functions is Dietzfelbinger's multiply-add-shift,
    (a * x + b) mod 2**64 >> 32: universal, and only a multiply and an add per shingle, where
    datasketch's affine scheme also needs a modulo. The shift comes after the minimum (it is
    monotone). The minima of many sets are one ``np.minimum.reduceat``. An empty set gets
    2**32 - 1 everywhere.
    """
    a, b = _permutations(num_perm, seed)
    signatures = np.full((len(bounds) - 1, num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    filled = np.flatnonzero(np.diff(bounds))
    starts = bounds[filled]
    first = 0
    while first < len(filled):  # chunks of whole sets, about _CHUNK_SHINGLES shingles each
        last = max(int(np.searchsorted(starts, starts[first] + _CHUNK_SHINGLES)), first + 1)
        low, high = starts[first], bounds[filled[last - 1] + 1]
        # Permutations x shingles: reduceat along the contiguous axis is ~10x faster than across it.
        products = a[:, None] * shingles[low:high].astype(np.uint64)
        products += b[:, None]
        minima = np.minimum.reduceat(products, starts[first:last] - low, axis=1)
        signatures[filled[first:last]] = (minima.T >> np.uint64(32)).astype(np.uint32)
        first = last
    return signatures


def compute_signatures(config: DedupConfig, texts: list[str]) -> Signatures:
    """Exact keys, shingle sets, MinHash signatures and bucket keys of texts."""
    normalized = [normalize(text) for text in texts]
    exact_keys = np.array([xxhash.xxh3_64_intdigest(text.encode("utf-8")) for text in normalized], dtype=np.uint64)
    hashes, bounds = shingle_hashes(normalized, config.ngram)
    # Each text's distinct top 32 bits, sorted: one sort of the batch's (text, hash) pairs.
    owners = np.repeat(np.arange(len(texts), dtype=np.uint64), np.diff(bounds))
    pairs = np.sort((owners << np.uint64(32)) | (hashes >> np.uint64(32)))
    pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))] if len(pairs) else pairs
    distinct = (pairs & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    distinct_bounds = np.searchsorted(pairs >> np.uint64(32), np.arange(len(texts) + 1, dtype=np.uint64))
    hashvalues = minhashes(distinct, distinct_bounds, config.num_perm, config.seed)
    shingles = [distinct[start : min(end, start + MAX_SHINGLES)]
                for start, end in zip(distinct_bounds[:-1].tolist(), distinct_bounds[1:].tolist(), strict=True)]
    return Signatures.of(exact_keys, hashvalues, shingles, config.bands)


# ---------------------------------------------------------------- the index actor


class IndexShard:
    """One shard of the run-global index, run as a Ray actor.

    Shard ``s`` of ``S`` holds the buckets of bands ``b`` with ``b % S == s``, the exact keys with
    ``key % S == s``, and the shingle sets the driver routes to it (by record id). An exact key
    remembers the first record committed with it (the one a later duplicate is reported against);
    a bucket remembers its first ``ids_per_bucket`` records, which bounds its memory.
    """

    def __init__(self, index: int, count: int, ids_per_bucket: int):
        self.index, self.count, self.ids_per_bucket = index, count, ids_per_bucket
        self.buckets: dict[int, list[str]] = {}
        self.exact: dict[int, str] = {}
        self.shingles: dict[str, bytes] = {}

    def candidates(self, band_keys: np.ndarray, exact_keys: np.ndarray) -> list[tuple[str | None, set[str]]]:
        """Per record: the id committed with its exact key (if this shard owns that key), and the
        ids sharing one of its buckets here."""
        buckets, exact = self.buckets, self.exact
        return [
            (exact.get(exact_key) if exact_key % self.count == self.index else None,
             {record_id for key in keys if key in buckets for record_id in buckets[key]})
            for exact_key, keys in zip(exact_keys.tolist(), band_keys.tolist(), strict=True)
        ]

    def shingles_of(self, ids: list[str]) -> list[bytes]:
        return [self.shingles[record_id] for record_id in ids]

    def insert(self, ids: list[str], band_keys: np.ndarray, exact_keys: np.ndarray,
               shingles: dict[str, bytes]) -> None:
        """Add committed records: their buckets, the exact keys this shard owns, ``shingles``."""
        for record_id, keys, exact_key in zip(ids, band_keys.tolist(), exact_keys.tolist(), strict=True):
            for key in keys:
                bucket = self.buckets.setdefault(key, [])
                if len(bucket) < self.ids_per_bucket:
                    bucket.append(record_id)
            if exact_key % self.count == self.index:
                self.exact.setdefault(exact_key, record_id)
        self.shingles.update(shingles)

    def size(self) -> dict[str, int]:
        return {"buckets": len(self.buckets), "exact": len(self.exact), "shingle_sets": len(self.shingles)}


# ---------------------------------------------------------------- the filter


class Dedup(Filter):
    name = "dedup"
    stateful = True
    committed_columns = ("id", "minhash")  # a resume reloads signatures, never the text

    def __init__(self, config: DedupConfig):
        super().__init__(config)
        self._fingerprint = settings_fingerprint(config)
        self._bands_of_shard = [np.arange(config.bands) % config.index_shards == index
                                for index in range(config.index_shards)]
        self.reloaded = self.rehashed = 0
        self._shards: list[Any] = []
        self.reset()

    def reset(self) -> None:
        """Fresh, empty index actors, seeded with the ``against`` outputs."""
        import ray

        self.close()
        # The index is memory, not compute: num_cpus=0 so it never waits behind engine replicas.
        shard_class = ray.remote(num_cpus=0)(IndexShard)
        count = self.config.index_shards
        self._shards = [shard_class.remote(index, count, self.config.ids_per_bucket) for index in range(count)]
        for directory in self.config.against:
            self._load_output(Location.of(directory))

    # -- judging

    def judge(self, records: list[Record]) -> list[Verdict]:
        if not records:
            return []
        signatures = compute_signatures(self.config, [text_of(record, self.config.text) for record in records])
        for record, exact_key, values, shingles in zip(records, signatures.exact_keys.tolist(), signatures.hashvalues,
                                                       signatures.shingles):
            record["minhash"] = pack_signature(self._fingerprint, exact_key, values, shingles)
        exact_hits, candidates = self._lookup(signatures)
        known = self._fetch_shingles(set().union(*candidates))

        verdicts: list[Verdict] = []
        kept: list[int] = []
        exact_in_batch: dict[int, int] = {}  # exact key -> index of the kept record in this batch
        buckets_in_batch: dict[int, int] = {}
        for i, record in enumerate(records):
            exact_key = int(signatures.exact_keys[i])
            band_keys = signatures.band_keys[i].tolist()
            earlier = exact_hits[i] or (
                records[exact_in_batch[exact_key]]["id"] if exact_key in exact_in_batch else None
            )
            if earlier is not None:
                verdicts.append(Drop("exact_duplicate", {"duplicate_of": earlier, "similarity": 1.0}))
                continue
            batch_mates = {buckets_in_batch[key] for key in band_keys if key in buckets_in_batch}
            mates = {records[j]["id"]: signatures.shingles[j] for j in batch_mates}
            mates.update((record_id, known[record_id]) for record_id in candidates[i])
            verdict = self._near_duplicate(signatures.shingles[i], mates)
            verdicts.append(verdict)
            if verdict is None:
                kept.append(i)
                exact_in_batch.setdefault(exact_key, i)
                for key in band_keys:
                    buckets_in_batch.setdefault(key, i)
        self._insert([records[i]["id"] for i in kept], signatures.take(kept))
        return verdicts

    def _near_duplicate(self, shingles: np.ndarray, mates: dict[str, np.ndarray]) -> Verdict:
        """Drop if the most similar candidate's exact Jaccard reaches ``threshold``."""
        if not mates:
            return None
        best_id, best = max(((record_id, jaccard(shingles, other)) for record_id, other in mates.items()),
                            key=lambda pair: pair[1])
        if best < self.config.threshold:
            return None
        return Drop("near_duplicate", {"duplicate_of": best_id, "similarity": round(best, 4)})

    def observe_committed(self, records: list[Record]) -> None:
        """Index records an earlier run (or an interrupted one) kept; rejected ones are ignored."""
        kept = [record for record in records if not record.get("drop_reason") and not is_dropped(record)]
        if kept:
            self._insert([record["id"] for record in kept], self._stored_or_computed(kept))

    def _load_output(self, directory: Location) -> None:
        """Seed the index with an earlier run's kept shards (``DIR/data/*.parquet``), a batch at a time."""
        shards = directory.child("data").files(".parquet")
        if not shards:
            raise FileNotFoundError(f"dedup.against: no kept shards in {directory.child('data')}")
        for shard in shards:
            batches = read_batches(shard, list(self.committed_columns))
            first = next(batches, [])
            if any(unpack_signature(r["minhash"], self._fingerprint, self.config.num_perm) is None for r in first):
                # A shard is written by one run: made with other settings, so its text is needed after all.
                batches = read_batches(shard, [*self.committed_columns, "messages"])
            else:
                batches = itertools.chain([first], batches)
            for batch in batches:
                self.observe_committed(batch)

    def close(self) -> None:
        import ray

        for shard in self._shards:
            try:
                ray.kill(shard)
            except Exception:  # noqa: BLE001 - best effort: the actor may already be gone
                pass
        self._shards = []

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "signatures_reloaded": self.reloaded, "signatures_rehashed": self.rehashed}

    # -- signatures

    def _stored_or_computed(self, records: list[Record]) -> Signatures:
        """Signatures of committed records: unpacked from their ``minhash`` column where it was
        made with these settings, hashed from their text otherwise."""
        exact_keys = np.zeros(len(records), dtype=np.uint64)
        hashvalues = np.zeros((len(records), self.config.num_perm), dtype=np.uint32)
        shingles: list[np.ndarray] = [np.empty(0, dtype=np.uint32)] * len(records)
        missing = []
        for i, record in enumerate(records):
            stored = unpack_signature(record.get("minhash"), self._fingerprint, self.config.num_perm)
            if stored is None:
                if "messages" not in record:  # only an output of an older sdg, resumed, can hold one
                    raise ValueError(f"dedup: committed record {record.get('id')} has no signature made with "
                                     "these settings, and its text was not read; finish this run with "
                                     "the sdg version that started it")
                missing.append(i)
            else:
                exact_keys[i], hashvalues[i], shingles[i] = stored
        if missing:
            computed = compute_signatures(self.config, [text_of(records[i], self.config.text) for i in missing])
            exact_keys[missing], hashvalues[missing] = computed.exact_keys, computed.hashvalues
            for i, computed_shingles in zip(missing, computed.shingles, strict=True):
                shingles[i] = computed_shingles
        self.reloaded += len(records) - len(missing)
        self.rehashed += len(missing)
        return Signatures.of(exact_keys, hashvalues, shingles, self.config.bands)

    # -- the index

    def _owner_shard(self, record_id: str) -> int:
        return xxhash.xxh32_intdigest(record_id.encode("utf-8")) % len(self._shards)

    def _lookup(self, signatures: Signatures) -> tuple[list[str | None], list[set[str]]]:
        """Per record: a committed id with the same exact key, and the committed ids sharing a bucket."""
        answers = self._get([
            shard.candidates.remote(signatures.band_keys[:, bands], signatures.exact_keys)
            for shard, bands in zip(self._shards, self._bands_of_shard)
        ])
        exact_hits: list[str | None] = [None] * len(signatures.exact_keys)
        candidates: list[set[str]] = [set() for _ in exact_hits]
        for answer in answers:
            for i, (exact_id, ids) in enumerate(answer):
                exact_hits[i] = exact_hits[i] or exact_id
                candidates[i] |= ids
        return exact_hits, candidates

    def _fetch_shingles(self, ids: set[str]) -> dict[str, np.ndarray]:
        wanted: list[list[str]] = [[] for _ in self._shards]
        for record_id in ids:
            wanted[self._owner_shard(record_id)].append(record_id)
        answers = self._get([shard.shingles_of.remote(w) for shard, w in zip(self._shards, wanted)])
        return {
            record_id: np.frombuffer(blob, dtype=np.uint32)
            for shard_ids, blobs in zip(wanted, answers)
            for record_id, blob in zip(shard_ids, blobs)
        }

    def _insert(self, ids: list[str], signatures: Signatures) -> None:
        if not ids:
            return
        owned: list[dict[str, bytes]] = [{} for _ in self._shards]
        for record_id, shingles in zip(ids, signatures.shingles):
            owned[self._owner_shard(record_id)][record_id] = shingles.tobytes()
        self._get([
            shard.insert.remote(ids, signatures.band_keys[:, bands], signatures.exact_keys, owned[s])
            for s, (shard, bands) in enumerate(zip(self._shards, self._bands_of_shard))
        ])

    def _get(self, calls: list) -> list:
        """The index actors' answers; a dead or silent actor means the index is lost."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            return ray.get(calls, timeout=self.config.index_timeout_s)
        except (RayActorError, GetTimeoutError) as exc:
            raise StateLost(f"dedup index actor unavailable: {type(exc).__name__}") from exc
