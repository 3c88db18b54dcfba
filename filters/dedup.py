"""Global dedup: an exact pass on the normalised text, then MinHash LSH near-dedup.

How a batch is judged (in the driver, at commit time, in commit order):

1. Each record's judged text is normalised (:func:`filters.text.normalize`) and hashed (exact
   key), and its word n-gram shingles are hashed for the whole batch at once
   (:func:`shingle_hashes`). datasketch turns those hashes into MinHash signatures with
   ``MinHash.bulk``: one permutation set for the batch, no per-token ``update``.
2. Each signature is cut into ``bands`` bands; each band is hashed to a 64-bit bucket key.
3. The index is global to the run and lives in ``index_shards`` Ray actors: band ``b`` lives on
   shard ``b % index_shards``, a record's signature on the shard its id hashes to. The driver asks
   every shard at once which committed records share an exact key or a bucket with each record,
   fetches those candidates' signatures, and keeps a record unless an earlier one (committed, or
   earlier in this batch) has the same exact key or an estimated Jaccard >= ``threshold``.
4. The kept records' keys and signatures are inserted, so the next batch (from any shard or
   replica) is judged against them: the first committed record of a cluster is the one kept.

LSH only proposes candidates; the estimated Jaccard over the full signature decides. So the
bands are set for recall well below the threshold (32 bands of 4 rows: a pair at Jaccard 0.7 is a
candidate with probability 1 - (1 - 0.7^4)^32 = 0.9998) and precision comes from the check.

Every judged record gets its signature in ``record["minhash"]`` (header + exact key + values;
:func:`pack_signature`), which the sink writes to the shard. A resumed run (``observe_committed``)
and ``against: [DIR, ...]`` reload the index from that column without re-hashing text; only
records whose signature was made with other settings are re-hashed.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq
import xxhash
from pydantic import model_validator

from filters.base import Drop, Filter, FilterConfig, Verdict
from filters.text import PRIME, TextField, fmix64, normalize, shingle_hashes, text_of
from gen.records import Record, is_dropped


class DedupConfig(FilterConfig):
    type: Literal["dedup"] = "dedup"
    # Self-Instruct and Alpaca judge novelty on the instruction: two answers to one question are
    # one task. "both" dedups whole conversations, datatrove's document-level choice.
    text: TextField = "instruction"
    # 5-word shingles: datatrove and text-dedup (ANCHORS, MinHash near-dedup defaults).
    ngram: int = 5
    # datasketch's default 128 permutations (datatrove 112, text-dedup 240-250): the estimate's
    # standard error at Jaccard 0.7 is sqrt(0.7 * 0.3 / 128) = 0.04.
    num_perm: int = 128
    bands: int = 32
    # text-dedup's 0.7; datatrove's 14 x 8 bands aim at ~0.72.
    threshold: float = 0.7
    seed: int = 1
    # Ray actors holding the index; small by default on a 2-core machine, raise it with the data.
    index_shards: int = 2
    # Output directories of earlier runs whose kept records seed the index.
    against: list[str] = []

    @model_validator(mode="after")
    def _bands_divide_perms(self) -> DedupConfig:
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm ({self.num_perm}) must be a multiple of bands ({self.bands})")
        return self


# ---------------------------------------------------------------- signatures and their storage

_MAGIC = b"sdgM"
_HEADER = struct.Struct("<4sIQ")  # magic, settings fingerprint, exact key


def settings_fingerprint(config: DedupConfig) -> int:
    """What makes two signatures comparable: same text, shingles, permutations."""
    return xxhash.xxh32_intdigest(f"{config.text}|{config.ngram}|{config.num_perm}|{config.seed}".encode())


def pack_signature(fingerprint: int, exact_key: int, hashvalues: np.ndarray) -> bytes:
    return _HEADER.pack(_MAGIC, fingerprint, exact_key) + hashvalues.astype("<u4").tobytes()


def unpack_signature(blob: bytes | None, fingerprint: int, num_perm: int) -> tuple[int, np.ndarray] | None:
    """(exact key, hash values) from a stored signature, or None if it was made differently."""
    if not blob or len(blob) != _HEADER.size + 4 * num_perm:
        return None
    magic, stored_fingerprint, exact_key = _HEADER.unpack_from(blob)
    if magic != _MAGIC or stored_fingerprint != fingerprint:
        return None
    return exact_key, np.frombuffer(blob, dtype="<u4", offset=_HEADER.size).astype(np.uint32)


class Signatures:
    """Exact keys, MinHash values and LSH bucket keys of one batch, as arrays."""

    def __init__(self, exact_keys: np.ndarray, hashvalues: np.ndarray, band_keys: np.ndarray):
        self.exact_keys = exact_keys  # (records,) uint64
        self.hashvalues = hashvalues  # (records, num_perm) uint32
        self.band_keys = band_keys  # (records, bands) uint64

    @classmethod
    def of(cls, exact_keys: np.ndarray, hashvalues: np.ndarray, bands: int) -> Signatures:
        # Bucket key of band b: the band's values folded into 64 bits, salted with b, so equal
        # values in different bands never share a bucket.
        rows = hashvalues.reshape(len(hashvalues), bands, -1).astype(np.uint64)
        keys = np.broadcast_to(np.arange(bands, dtype=np.uint64), rows.shape[:2]).copy()
        for row in range(rows.shape[2]):
            keys = fmix64(keys * PRIME + rows[:, :, row])
        return cls(exact_keys, hashvalues, keys)

    def take(self, indices: list[int]) -> Signatures:
        return Signatures(self.exact_keys[indices], self.hashvalues[indices], self.band_keys[indices])


def compute_signatures(config: DedupConfig, texts: list[str]) -> Signatures:
    """Exact keys, MinHash signatures (datasketch, one permutation set) and bucket keys of texts."""
    from datasketch import MinHash

    normalized = [normalize(text).encode("utf-8") for text in texts]
    exact_keys = np.array([xxhash.xxh3_64_intdigest(text) for text in normalized], dtype=np.uint64)
    hashes, bounds = shingle_hashes(normalized, config.ngram)
    shingles = (hashes >> np.uint64(32)).tolist()  # datasketch's affine32 scheme takes 32 bits
    minhashes = MinHash.bulk(
        (shingles[bounds[i] : bounds[i + 1]] for i in range(len(texts))),
        num_perm=config.num_perm,
        seed=config.seed,
        hashfunc=int,  # the shingle hashes are already 32-bit integers
    )
    hashvalues = np.array([m.hashvalues for m in minhashes], dtype=np.uint32).reshape(len(texts), -1)
    return Signatures.of(exact_keys, hashvalues, config.bands)


# ---------------------------------------------------------------- the index actor


class IndexShard:
    """One shard of the run-global index, run as a Ray actor.

    Shard ``s`` of ``S`` holds the buckets of bands ``b`` with ``b % S == s``, the exact keys with
    ``key % S == s``, and the signatures the driver routes to it (by record id). Each bucket and
    exact key remembers only the first record committed with it: that is the record a later
    duplicate is reported against, and one id per key bounds memory to one entry per key.
    """

    def __init__(self, index: int, count: int):
        self.index, self.count = index, count
        self.buckets: dict[int, str] = {}
        self.exact: dict[int, str] = {}
        self.signatures: dict[str, bytes] = {}

    def candidates(self, band_keys: np.ndarray, exact_keys: np.ndarray) -> list[tuple[str | None, set[str]]]:
        """Per record: the id committed with its exact key (if this shard owns that key), and the
        ids sharing one of its buckets here."""
        buckets, exact = self.buckets, self.exact
        return [
            (exact.get(exact_key) if exact_key % self.count == self.index else None,
             {buckets[key] for key in keys if key in buckets})
            for exact_key, keys in zip(exact_keys.tolist(), band_keys.tolist(), strict=True)
        ]

    def signatures_of(self, ids: list[str]) -> list[bytes]:
        return [self.signatures[record_id] for record_id in ids]

    def insert(self, ids: list[str], band_keys: np.ndarray, exact_keys: np.ndarray,
               signatures: dict[str, bytes]) -> None:
        """Add committed records: their buckets, the exact keys this shard owns, ``signatures``."""
        for record_id, keys, exact_key in zip(ids, band_keys.tolist(), exact_keys.tolist(), strict=True):
            for key in keys:
                self.buckets.setdefault(key, record_id)
            if exact_key % self.count == self.index:
                self.exact.setdefault(exact_key, record_id)
        self.signatures.update(signatures)

    def size(self) -> dict[str, int]:
        return {"buckets": len(self.buckets), "exact": len(self.exact), "signatures": len(self.signatures)}


# ---------------------------------------------------------------- the filter


class Dedup(Filter):
    name = "dedup"

    def __init__(self, config: DedupConfig):
        super().__init__(config)
        import ray

        self._fingerprint = settings_fingerprint(config)
        # The index is memory, not compute: num_cpus=0 so it never waits behind engine replicas.
        shard_class = ray.remote(num_cpus=0)(IndexShard)
        count = config.index_shards
        self._shards = [shard_class.remote(index, count) for index in range(count)]
        self._bands_of_shard = [np.arange(config.bands) % count == index for index in range(count)]
        self.reloaded = self.rehashed = 0
        for directory in config.against:
            self._load_output(Path(directory))

    # -- judging

    def judge(self, records: list[Record]) -> list[Verdict]:
        if not records:
            return []
        signatures = compute_signatures(self.config, [text_of(record, self.config.text) for record in records])
        for record, exact_key, values in zip(records, signatures.exact_keys.tolist(), signatures.hashvalues):
            record["minhash"] = pack_signature(self._fingerprint, exact_key, values)
        exact_hits, candidates = self._lookup(signatures)
        known = self._fetch_signatures(set().union(*candidates))

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
            mates = {records[j]["id"]: signatures.hashvalues[j] for j in batch_mates}
            mates.update((record_id, known[record_id]) for record_id in candidates[i])
            verdict = self._near_duplicate(signatures.hashvalues[i], mates)
            verdicts.append(verdict)
            if verdict is None:
                kept.append(i)
                exact_in_batch.setdefault(exact_key, i)
                for key in band_keys:
                    buckets_in_batch.setdefault(key, i)
        self._insert([records[i]["id"] for i in kept], signatures.take(kept))
        return verdicts

    def _near_duplicate(self, values: np.ndarray, mates: dict[str, np.ndarray]) -> Verdict:
        """Drop if the most similar earlier record is at least ``threshold`` similar."""
        if not mates:
            return None
        ids = list(mates)
        similarities = (np.stack([mates[record_id] for record_id in ids]) == values).mean(axis=1)
        best = int(similarities.argmax())
        if similarities[best] < self.config.threshold:
            return None
        return Drop("near_duplicate", {"duplicate_of": ids[best], "similarity": round(float(similarities[best]), 4)})

    def observe_committed(self, records: list[Record]) -> None:
        """Index records an earlier run (or an interrupted one) kept; rejected ones are ignored."""
        kept = [record for record in records if not record.get("drop_reason") and not is_dropped(record)]
        if kept:
            self._insert([record["id"] for record in kept], self._stored_or_computed(kept))

    def _load_output(self, directory: Path) -> None:
        """Seed the index with an earlier run's kept shards (``DIR/data/*.parquet``)."""
        shards = sorted((directory / "data").glob("*.parquet"))
        if not shards:
            raise FileNotFoundError(f"dedup.against: no kept shards in {directory / 'data'}")
        for path in shards:
            records = pq.read_table(path, columns=["id", "minhash"]).to_pylist()
            if any(unpack_signature(r["minhash"], self._fingerprint, self.config.num_perm) is None for r in records):
                # Made with other settings: their text is needed after all.
                messages = pq.read_table(path, columns=["messages"]).column("messages").to_pylist()
                for record, conversation in zip(records, messages, strict=True):
                    record["messages"] = conversation
            self.observe_committed(records)

    def close(self) -> None:
        import ray

        for shard in self._shards:
            ray.kill(shard)
        self._shards = []

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "signatures_reloaded": self.reloaded, "signatures_rehashed": self.rehashed}

    # -- signatures

    def _stored_or_computed(self, records: list[Record]) -> Signatures:
        """Signatures of committed records: unpacked from their ``minhash`` column where it was
        made with these settings, hashed from their text otherwise."""
        exact_keys = np.zeros(len(records), dtype=np.uint64)
        hashvalues = np.zeros((len(records), self.config.num_perm), dtype=np.uint32)
        missing = []
        for i, record in enumerate(records):
            stored = unpack_signature(record.get("minhash"), self._fingerprint, self.config.num_perm)
            if stored is None:
                missing.append(i)
            else:
                exact_keys[i], hashvalues[i] = stored
        if missing:
            computed = compute_signatures(self.config, [text_of(records[i], self.config.text) for i in missing])
            exact_keys[missing], hashvalues[missing] = computed.exact_keys, computed.hashvalues
        self.reloaded += len(records) - len(missing)
        self.rehashed += len(missing)
        return Signatures.of(exact_keys, hashvalues, self.config.bands)

    # -- the index

    def _signature_shard(self, record_id: str) -> int:
        return xxhash.xxh32_intdigest(record_id.encode("utf-8")) % len(self._shards)

    def _lookup(self, signatures: Signatures) -> tuple[list[str | None], list[set[str]]]:
        """Per record: a committed id with the same exact key, and the committed ids sharing a bucket."""
        import ray

        answers = ray.get([
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

    def _fetch_signatures(self, ids: set[str]) -> dict[str, np.ndarray]:
        import ray

        wanted: list[list[str]] = [[] for _ in self._shards]
        for record_id in ids:
            wanted[self._signature_shard(record_id)].append(record_id)
        answers = ray.get([shard.signatures_of.remote(w) for shard, w in zip(self._shards, wanted)])
        return {
            record_id: np.frombuffer(blob, dtype=np.uint32)
            for shard_ids, blobs in zip(wanted, answers)
            for record_id, blob in zip(shard_ids, blobs)
        }

    def _insert(self, ids: list[str], signatures: Signatures) -> None:
        import ray

        if not ids:
            return
        owned: list[dict[str, bytes]] = [{} for _ in self._shards]
        for record_id, values in zip(ids, signatures.hashvalues):
            owned[self._signature_shard(record_id)][record_id] = values.tobytes()
        ray.get([
            shard.insert.remote(ids, signatures.band_keys[:, bands], signatures.exact_keys, owned[s])
            for s, (shard, bands) in enumerate(zip(self._shards, self._bands_of_shard))
        ])
