"""Global dedup: an exact pass on the normalised text, then MinHash LSH near-dedup decided by the
exact Jaccard of the shingle sets.

How a batch is prepared (:meth:`Dedup.prepare`: each record alone, so on any worker), then judged
(in the driver, at commit time, in commit order):

1. Prepared: each record's judged text is normalised (:func:`filters.text.normalize`) and hashed
   (exact key), and its word n-gram shingles are hashed for the whole batch at once
   (:func:`shingle_hashes`). Each record's shingle set (sorted unique 32-bit hashes) and its
   MinHash signature (:func:`minhashes`) come from those hashes, with no n-gram string built;
   they go in ``record["minhash"]`` (:func:`pack_signature`).
2. Each signature is cut into ``bands`` bands; each band is hashed to a 64-bit bucket key.
3. The index is global to the run and lives in ``index_shards`` Ray actors (:class:`IndexShard`,
   numpy arrays: ``benchmarks/bench_dedup_memory.py`` measures their bytes per record): band ``b``
   lives on shard ``b % index_shards``, indexed record number ``r``'s id and shingle set on shard
   ``r % index_shards``. The driver asks every shard at once which committed records share an
   exact key or a bucket with each record, fetches those candidates' ids and shingle sets, and
   keeps a record unless an earlier one (committed, or earlier in this batch) has the same exact
   key or an exact Jaccard >= ``threshold``.
4. The kept records' keys and shingle sets are inserted, so the next batch (from any shard or
   replica) is judged against them: the first committed record of a cluster is the one kept.

LSH only proposes candidates; the exact Jaccard of the two shingle sets decides (:func:`jaccard`),
so there is no estimation error at the threshold. The bands are therefore set for candidate recall
~1 at the threshold (32 bands of 4 rows: a pair at Jaccard 0.7 is a candidate with probability
1 - (1 - 0.7^4)^32 = 0.9998), and the false candidates that costs are removed by the exact check.

The sink writes ``record["minhash"]`` to the shard. A resumed run (``observe_committed``)
and ``against: [DIR, ...]`` reload the index from that column without re-hashing text; only
records whose column was made with other settings (or an older format) are re-hashed.
"""

from __future__ import annotations

import bisect
import ctypes
import functools
import itertools
import re
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


def made_with(blob: bytes | None, fingerprint: int, num_perm: int) -> bool:
    """Whether ``blob`` is a packed signature made with these settings (its header alone)."""
    if not blob or len(blob) < _HEADER.size:
        return False
    magic, stored_fingerprint, _, count = _HEADER.unpack_from(blob)
    return magic == _MAGIC and stored_fingerprint == fingerprint and len(blob) == _HEADER.size + 4 * (num_perm + count)


def unpack_signature(blob: bytes | None, fingerprint: int,
                     num_perm: int) -> tuple[int, np.ndarray, np.ndarray] | None:
    """(exact key, hash values, shingle set) from a stored column, or None if it was made differently."""
    if not made_with(blob, fingerprint, num_perm):
        return None
    exact_key = _HEADER.unpack_from(blob)[2]
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

# Each band has a table of its own, and keeps its bucket keys to their top 31 bits there: 2 bytes
# an entry with the table's directory (see _SortedTable), not 8. Two different buckets of a band
# then meet with probability ~records / 2^31 per lookup (0.5% at ten million records): a false
# candidate, which the exact Jaccard check rejects, never a missed one. (One table for all of a
# shard's 16 bands met 16 times as many: ~1.2 false candidates a record at ten million, each
# fetched and compared, so that the cost of a record grew with the index.)
BUCKET_KEY_SHIFT, BUCKET_KEY_BITS = np.uint64(33), 31


class _SortedTable:
    """Keys of ``key_bits`` bits with a record number each, sorted by key, looked up many keys at once.

    Most entries are in the main part, stored as their low ``low_bits`` bits only: a directory of
    2^(key_bits - low_bits) + 1 offsets says where each value of the bits above starts, so a
    31-bit bucket key costs 2 bytes, not 4. New entries go to a small pending part (whole keys),
    merged into the main part once it holds 1/16 of it: a merge moves the main part once every
    1/16 of it inserted, and the pending part's whole keys cost at most ~3 bytes a record
    (bench_dedup_memory).
    """

    def __init__(self, key_dtype: type, low_dtype: type, key_bits: int, low_bits: int):
        self.key_dtype, self.low_dtype = key_dtype, low_dtype
        self.shift = key_dtype(low_bits)
        self.mask = key_dtype((1 << low_bits) - 1)
        self.high_values = 1 << (key_bits - low_bits)
        self.directory = np.zeros(self.high_values + 1, dtype=np.uint32)
        self.low, self.records = np.empty(0, low_dtype), np.empty(0, np.uint32)
        self.pending_keys, self.pending_records = np.empty(0, key_dtype), np.empty(0, np.uint32)

    def _ranges(self, keys: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per part: where the entries equal to each key start and end, and the part's records."""
        high = (keys >> self.shift).astype(np.int64)
        low = (keys & self.mask).astype(self.low_dtype)
        left = _bisect(self.low, low, self.directory[high], self.directory[high + 1], right=False)
        right = _bisect(self.low, low, left, self.directory[high + 1], right=True)
        pending = (np.searchsorted(self.pending_keys, keys, "left"), np.searchsorted(self.pending_keys, keys, "right"))
        return [(left, right, self.records), (*pending, self.pending_records)]

    def count(self, keys: np.ndarray) -> np.ndarray:
        return sum(right - left for left, right, _ in self._ranges(keys))

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query position, record) for every stored entry whose key equals one of ``keys``."""
        queries, records = [], []
        for left, right, numbers in self._ranges(keys):
            counts = right - left
            first = np.repeat(left - np.cumsum(counts) + counts, counts)
            queries.append(np.repeat(np.arange(len(keys)), counts))
            records.append(numbers[first + np.arange(counts.sum())])
        return np.concatenate(queries), np.concatenate(records)

    def add(self, keys: np.ndarray, records: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        at = np.searchsorted(self.pending_keys, keys[order], "right")
        self.pending_keys = np.insert(self.pending_keys, at, keys[order])
        self.pending_records = np.insert(self.pending_records, at, records[order])
        if len(self.pending_keys) * 16 > len(self.low) + (1 << 15):
            main = np.repeat(np.arange(self.high_values, dtype=self.key_dtype), np.diff(self.directory)) << self.shift
            main |= self.low.astype(self.key_dtype)
            at = np.searchsorted(main, self.pending_keys, "right")
            merged = np.insert(main, at, self.pending_keys)
            self.records = np.insert(self.records, at, self.pending_records)
            self.directory = np.searchsorted(merged >> self.shift, np.arange(self.high_values + 1, dtype=self.key_dtype)
                                             ).astype(np.uint32)
            self.low = (merged & self.mask).astype(self.low_dtype)
            self.pending_keys, self.pending_records = self.pending_keys[:0], self.pending_records[:0]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.directory, self.low, self.records, self.pending_keys, self.pending_records))


def _bisect(values: np.ndarray, targets: np.ndarray, low: np.ndarray, high: np.ndarray, right: bool) -> np.ndarray:
    """Per target, ``np.searchsorted`` within its own sorted slice ``values[low:high]``: a binary
    search of all targets at once, each step one array operation."""
    low, high = low.astype(np.int64), high.astype(np.int64)
    active = np.flatnonzero(low < high)
    while len(active):
        middle = (low[active] + high[active]) // 2
        probe = values[middle]
        after = probe <= targets[active] if right else probe < targets[active]
        low[active[after]] = middle[after] + 1
        high[active[~after]] = middle[~after]
        active = active[low[active] < high[active]]
    return low


class _PackedColumn:
    """Variable-length byte strings appended in order, read back by position. Each appended run
    is one bytes object and the length of each value in it (2 bytes where they fit: an id and up
    to MAX_SHINGLES shingles take ~8 kB): no Python object per value, and no growth slack (a
    growing bytearray or array over-allocates by up to an eighth)."""

    def __init__(self):
        self.runs: list[bytes] = []
        self.lengths: list[np.ndarray] = []  # per run: the length of each of its values
        self.firsts: list[int] = []  # per run: the position of its first value
        self.size = 0

    def extend(self, values: list[bytes]) -> None:
        if not values:
            return
        lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
        self.lengths.append(lengths.astype(np.uint16) if lengths.max() <= np.iinfo(np.uint16).max else lengths)
        self.runs.append(b"".join(values))
        self.firsts.append(self.size)
        self.size += len(values)

    def __getitem__(self, position: int) -> bytes:
        run = bisect.bisect_right(self.firsts, position) - 1
        at, lengths = position - self.firsts[run], self.lengths[run]
        start = int(lengths[:at].sum(dtype=np.int64))  # a run is one batch's records: a few thousand
        return self.runs[run][start : start + int(lengths[at])]

    @property
    def nbytes(self) -> int:
        return sum(len(run) for run in self.runs) + sum(lengths.nbytes for lengths in self.lengths)


class IndexShard:
    """One shard of the run-global index, run as a Ray actor.

    Every indexed record has a number (the driver counts them in commit order). Shard ``s`` of
    ``S`` holds the bucket entries of bands ``b`` with ``b % S == s``, the exact keys with
    ``key % S == s``, and the id and shingle set of records ``r`` with ``r % S == s``. An exact
    key remembers the first record committed with it (the one a later duplicate is reported
    against); a bucket its first ``ids_per_bucket`` records, which bounds its memory. All of it
    lives in numpy arrays and packed bytes, no Python object per record (``bench_dedup_memory.py``
    measures the bytes per record).
    """

    def __init__(self, index: int, count: int, ids_per_bucket: int, bands: int):
        _return_freed_arrays_to_the_os()
        self.index, self.count, self.ids_per_bucket = index, count, ids_per_bucket
        self.buckets = [_SortedTable(np.uint32, np.uint16, BUCKET_KEY_BITS, 16) for _ in range(bands)]
        self.exact = _SortedTable(np.uint64, np.uint64, 64, 48)
        self.owned = _PackedColumn()  # per owned record: its packed id (_pack_id), then its shingle set

    def candidates(self, band_keys: np.ndarray, exact_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The record committed with each one's exact key (-1: none, or not this shard's key),
        and (query position, record) pairs sharing one of its buckets here."""
        exact = np.full(len(exact_keys), -1, dtype=np.int64)
        mine = np.flatnonzero(exact_keys % np.uint64(self.count) == self.index)
        query, record = self.exact.lookup(exact_keys[mine])  # one record a key at most
        exact[mine[query]] = record
        found = [table.lookup(keys) for table, keys in zip(self.buckets, bucket_keys(band_keys), strict=True)]
        # With more index_shards than bands, a shard holds exact keys and records but no band.
        queries, records = zip(*found) if found else ((np.empty(0, np.int64),), (np.empty(0, np.uint32),))
        return exact, np.concatenate(queries), np.concatenate(records)

    def records(self, numbers: list[int]) -> list[tuple[str, bytes]]:
        """(id, shingle set) of records this shard owns."""
        return [_unpack_owned(self.owned[number // self.count]) for number in numbers]

    def insert(self, numbers: np.ndarray, band_keys: np.ndarray, exact_keys: np.ndarray,
               owned: list[tuple[str, bytes]]) -> None:
        """Add committed records ``numbers``: their buckets, the exact keys this shard owns, and
        the ids and shingle sets of the records it owns (``owned``, in number order)."""
        entries = numbers.astype(np.uint32)
        for table, keys in zip(self.buckets, bucket_keys(band_keys), strict=True):
            room = self.ids_per_bucket - table.count(keys) - _rank_among_equal(keys)
            table.add(keys[room > 0], entries[room > 0])
        mine = np.flatnonzero(exact_keys % np.uint64(self.count) == self.index)
        new = mine[(self.exact.count(exact_keys[mine]) == 0) & (_rank_among_equal(exact_keys[mine]) == 0)]
        self.exact.add(exact_keys[new], numbers[new].astype(np.uint32))
        self.owned.extend([_pack_id(record_id) + shingles for record_id, shingles in owned])

    def size(self) -> dict[str, int]:
        return {"records": self.owned.size,
                "bytes": sum(table.nbytes for table in self.buckets) + self.exact.nbytes + self.owned.nbytes}


def bucket_keys(band_keys: np.ndarray) -> np.ndarray:
    """Per band (a row each), its records' keys in the band's table: the buckets the index holds."""
    return (band_keys.T >> BUCKET_KEY_SHIFT).astype(np.uint32)


def _return_freed_arrays_to_the_os() -> None:
    """A merge replaces the index's arrays with larger ones. glibc serves arrays up to 32 MB from
    its heap once it has freed one (its mmap threshold adapts), and keeps what they free there:
    the actor's RSS grew by ~1 kB a record with ~0.3 kB in arrays (bench_dedup_memory). A fixed
    threshold maps every array of 128 kB or more on its own, and unmaps it when freed."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 << 10)  # M_MMAP_THRESHOLD
    except OSError:  # not glibc: its allocator has its own policy
        pass


_HEX_ID = re.compile(r"[0-9a-f]{32}")
_HEX_ID_TAG, _TEXT_ID_TAG = b"\0", b"\1"


def _pack_id(record_id: str) -> bytes:
    """sdg's ids (:func:`gen.records.content_id`) are 32 hex digits: 17 bytes as a tag and their
    16 bytes; any other id is a tag, its length (2 bytes) and its UTF-8."""
    if _HEX_ID.fullmatch(record_id):
        return _HEX_ID_TAG + bytes.fromhex(record_id)
    encoded = record_id.encode("utf-8")
    return _TEXT_ID_TAG + len(encoded).to_bytes(2, "little") + encoded


def _unpack_owned(packed: bytes) -> tuple[str, bytes]:
    """(id, shingle set) from an owned record's packed id followed by its shingle set."""
    if packed[:1] == _HEX_ID_TAG:
        return packed[1:17].hex(), packed[17:]
    end = 3 + int.from_bytes(packed[1:3], "little")
    return packed[3:end].decode("utf-8"), packed[end:]


def _rank_among_equal(keys: np.ndarray) -> np.ndarray:
    """For each key, how many equal keys come before it in ``keys``."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.concatenate(([True], ordered[1:] != ordered[:-1])) if len(keys) else np.empty(0, bool)
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(keys)), 0))
    rank = np.empty(len(keys), dtype=np.int64)
    rank[order] = np.arange(len(keys)) - group_start
    return rank


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
        self._shards = [shard_class.remote(index, count, self.config.ids_per_bucket, int(bands.sum()))
                        for index, bands in enumerate(self._bands_of_shard)]
        self._indexed = 0  # records indexed: the next one's number
        for directory in self.config.against:
            self._load_output(Location.of(directory))

    # -- judging

    @classmethod
    def prepare(cls, config: DedupConfig, records: list[Record]) -> None:
        """Each record's exact key, MinHash signature and shingle set, in ``record["minhash"]``."""
        fingerprint = settings_fingerprint(config)
        unsigned = [record for record in records if not made_with(record.get("minhash"), fingerprint, config.num_perm)]
        if not unsigned:
            return
        signatures = compute_signatures(config, [text_of(record, config.text) for record in unsigned])
        for record, exact_key, values, shingles in zip(unsigned, signatures.exact_keys.tolist(), signatures.hashvalues,
                                                       signatures.shingles, strict=True):
            record["minhash"] = pack_signature(fingerprint, exact_key, values, shingles)

    def judge(self, records: list[Record]) -> list[Verdict]:
        if not records:
            return []
        signatures = self._signatures_of(records)
        exact_hits, candidates = self._lookup(signatures)
        known = self._fetch(set().union(*candidates) | {n for n in exact_hits if n is not None})

        verdicts: list[Verdict] = []
        kept: list[int] = []
        exact_in_batch: dict[int, int] = {}  # exact key -> index of the kept record in this batch
        buckets_in_batch: dict[int, int] = {}
        for i, record in enumerate(records):
            exact_key = int(signatures.exact_keys[i])
            band_keys = signatures.band_keys[i].tolist()
            earlier = known[exact_hits[i]][0] if exact_hits[i] is not None else (
                records[exact_in_batch[exact_key]]["id"] if exact_key in exact_in_batch else None
            )
            if earlier is not None:
                verdicts.append(Drop("exact_duplicate", {"duplicate_of": earlier, "similarity": 1.0}))
                continue
            batch_mates = {buckets_in_batch[key] for key in band_keys if key in buckets_in_batch}
            mates = {records[j]["id"]: signatures.shingles[j] for j in batch_mates}
            mates.update(known[number] for number in candidates[i])
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
        missing = [record for record in records
                   if not made_with(record.get("minhash"), self._fingerprint, self.config.num_perm)]
        for record in missing:
            if "messages" not in record:  # only an output of an older sdg, resumed, can hold one
                raise ValueError(f"dedup: committed record {record.get('id')} has no signature made with "
                                 "these settings, and its text was not read; finish this run with "
                                 "the sdg version that started it")
        self.prepare(self.config, missing)
        self.reloaded += len(records) - len(missing)
        self.rehashed += len(missing)
        return self._signatures_of(records)

    def _signatures_of(self, records: list[Record]) -> Signatures:
        """The signatures :meth:`prepare` left in the records' ``minhash``."""
        unpacked = [unpack_signature(record["minhash"], self._fingerprint, self.config.num_perm) for record in records]
        hashvalues = (np.stack([values for _, values, _ in unpacked]) if unpacked
                      else np.empty((0, self.config.num_perm), dtype=np.uint32))
        return Signatures.of(np.array([key for key, _, _ in unpacked], dtype=np.uint64), hashvalues,
                             [shingles for _, _, shingles in unpacked], self.config.bands)

    # -- the index

    def _lookup(self, signatures: Signatures) -> tuple[list[int | None], list[set[int]]]:
        """Per record: the committed record with the same exact key, and those sharing a bucket."""
        answers = self._get([
            shard.candidates.remote(signatures.band_keys[:, bands], signatures.exact_keys)
            for shard, bands in zip(self._shards, self._bands_of_shard)
        ])
        exact_hits: list[int | None] = [None] * len(signatures.exact_keys)
        candidates: list[set[int]] = [set() for _ in exact_hits]
        for exact, queries, numbers in answers:
            for i in np.flatnonzero(exact >= 0).tolist():
                exact_hits[i] = int(exact[i])
            for i, number in zip(queries.tolist(), numbers.tolist(), strict=True):
                candidates[i].add(number)
        return exact_hits, candidates

    def _fetch(self, numbers: set[int]) -> dict[int, tuple[str, np.ndarray]]:
        """Id and shingle set of committed records, from the shards that own them."""
        wanted: list[list[int]] = [[] for _ in self._shards]
        for number in numbers:
            wanted[number % len(self._shards)].append(number)
        answers = self._get([shard.records.remote(w) for shard, w in zip(self._shards, wanted)])
        return {number: (record_id, np.frombuffer(shingles, dtype=np.uint32))
                for shard_numbers, answer in zip(wanted, answers)
                for number, (record_id, shingles) in zip(shard_numbers, answer, strict=True)}

    def _insert(self, ids: list[str], signatures: Signatures) -> None:
        if not ids:
            return
        first, count = self._indexed, len(self._shards)
        numbers = np.arange(first, first + len(ids), dtype=np.int64)
        self._indexed += len(ids)
        self._get([
            shard.insert.remote(numbers, signatures.band_keys[:, bands], signatures.exact_keys,
                                [(ids[i], signatures.shingles[i].tobytes())
                                 for i in range((s - first) % count, len(ids), count)])
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
