"""``sdg filter`` over the cluster: the filters' stateless part on Ray Data workers, in parallel.

    seed files -> SeedStream (one streaming read task, on the driver's node)
               -> map_batches(StatelessPart, concurrency=N), N actors: the stateless filters
                  judge, the stateful ones prepare (dedup: each record's signature)
               -> the driver, in input order (``preserve_order``): the stateful filters judge
                  (dedup's index actors) in commit order, then the sink, as every run commits

The seeds are read by sdg's own :class:`gen.seeds.SeedReader`, as one stream: identical seeds are
numbered in input order, ``limit`` counts in input order, and a malformed line is reported or
stops the run naming its file and line, exactly as in ``sdg run``. Records already committed (a
resumed run) are left out where they are read, so they are never judged again. The read task runs
on the driver's node (input paths are the driver's), with no CPU of its own, like Ray Data's own
single-stream readers (``from_torch``).

Each worker builds the stateless filters once (fastText models load once per worker) and marks a
batch's records as the driver's chain would: dropped ones with their filter, reason and evidence,
the rest annotated (``lang``, ``lang_score``) and prepared for the stateful filters
(:meth:`filters.base.Filter.prepare`; dedup's ``minhash``), which the driver's chain then finds
done. Records travel pickled, one per row, so
whatever a record holds (``metadata`` of any shape, evidence of any type) arrives as it left.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from cluster.engine import ResourcesUnavailable
from filters.base import FilterConfig
from gen.errors import ConfigurationError
from gen.keyset import KeySet
from gen.records import Record
from gen.seeds import MAX_REPORTED_PROBLEMS, SeedError, SeedProblem, SeedReader

# A block of the stream: ``item`` is a pickled record, a pickled SeedProblem (a malformed line
# skipped with on_error: skip), or null (the last row, for the counters); ``read`` and
# ``skipped`` are the reader's counts so far, so the driver's manifest reports them.
_SCHEMA = pa.schema([("item", pa.binary()), ("read", pa.int64()), ("skipped", pa.int64())])

BLOCK_BYTES = 1 << 20  # ~1,000 records of instruction data: a few per worker in flight, each judged in ~0.5 s


class StatelessPart:
    """The ``map_batches`` callable: the stateless filters of ``configs``, built once per worker,
    and the stateful ones' preparation."""

    def __init__(self, configs: list[FilterConfig]):
        from filters import build_chain, is_stateful

        self.chain = build_chain([config for config in configs if not is_stateful(config)])
        self.stateful = [config for config in configs if is_stateful(config)]

    def __call__(self, batch: pa.Table) -> pa.Table:
        from filters import prepare

        items = batch.column("item").to_pylist()
        unpickled = [pickle.loads(item) if item is not None else None for item in items]
        judged = [i for i, item in enumerate(unpickled) if isinstance(item, dict)]
        kept, _ = self.chain([unpickled[i] for i in judged])  # marks drops and adds annotations in place
        prepare(self.stateful, kept)
        for i in judged:
            items[i] = pickle.dumps(unpickled[i], protocol=pickle.HIGHEST_PROTOCOL)
        return batch.set_column(0, "item", pa.array(items, pa.binary()))


def judged_on_workers(seeds: SeedReader, configs: list[FilterConfig], committed: KeySet,
                      concurrency: int | None, batch_size: int) -> Iterator[Record]:
    """The seeds not in ``committed``, in input order, each judged by the stateless filters of
    ``configs`` and, when kept, prepared for the stateful ones, on ``concurrency`` Ray Data workers
    (None: one per CPU of the cluster); no filter: as read.
    ``seeds``' counters (``read``, ``skipped``, ``problems``) follow the stream as it is read."""
    _ray_data_lines_off_the_terminal()
    dataset = ray.data.read_datasource(
        _SeedStream(seeds, ray.put(committed), batch_size),
        override_num_blocks=1,  # one stream: input order is what numbers identical seeds
        num_cpus=0)  # reading is light beside judging; the workers get the CPUs
    if configs:
        cpus = ray.cluster_resources().get("CPU", 0)
        workers = concurrency or max(int(cpus), 1)
        if workers > cpus:  # Ray Data would wait for actors that cannot be placed
            raise ResourcesUnavailable(f"filter_workers.concurrency ({workers}) needs {workers} CPUs, the Ray "
                                       f"cluster has {cpus:g}: lower it or add nodes")
        dataset = dataset.map_batches(StatelessPart, fn_constructor_kwargs={"configs": configs},
                                      batch_size=batch_size, batch_format="pyarrow",
                                      compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
                                      # Ray Data restarts lost map actors by default, and Ray then
                                      # prints an error line for each (its constructor arguments are
                                      # in the object store: ray-project/ray#57733) on the terminal. A
                                      # lost worker stops the run instead; its resume redoes the rest.
                                      max_restarts=0)
    # Ray Data merges the blocks a task yields up to this size, and one worker judges a block: at its
    # default (128 MiB, ~150k records) a whole input would go to one worker, after it was all read.
    dataset.context.target_max_block_size = BLOCK_BYTES
    dataset.context.execution_options.preserve_order = True  # the driver commits in input order
    dataset.context.enable_progress_bars = False  # the run has its own progress line
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            for item, read, skipped in zip(*(batch.column(name).to_pylist() for name in _SCHEMA.names),
                                           strict=True):
                seeds.read, seeds.skipped = read, skipped
                obj = pickle.loads(item) if item is not None else None
                if isinstance(obj, SeedProblem):
                    seeds.problems.append(obj)
                elif obj is not None:
                    yield obj
    except Exception as exc:  # noqa: BLE001 - one of the user's errors, Ray-wrapped, is told as it was
        users = _users_error_in(exc)
        if users is None:
            raise
        raise type(users)(str(users)) from None


def _ray_data_lines_off_the_terminal() -> None:
    """Ray Data prints its own lines (a dataset started and finished, its warnings) on the terminal
    besides its log file; in a run the terminal shows sdg's lines, and Ray Data's stay in Ray's
    session logs (``ray-data.log``)."""
    logger = logging.getLogger("ray.data")
    for handler in [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]:
        logger.removeHandler(handler)


def _users_error_in(exc: BaseException | None) -> Exception | None:
    """A seed file's error (:class:`SeedError`, ``file:line: ...``) or the spec's
    (:class:`ConfigurationError`) raised on a worker, unwrapped from Ray's exceptions, so the user
    reads its message rather than a remote traceback."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc) in (SeedError, ConfigurationError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__
    return None


class _SeedStream(Datasource):
    """One read task: the seed reader's stream, in blocks of ``block_rows`` rows."""

    def __init__(self, seeds: SeedReader, committed: ray.ObjectRef, block_rows: int):
        self.seeds, self.committed, self.block_rows = seeds, committed, block_rows

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        metadata = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
        return [ReadTask(lambda: _read(self.seeds, self.committed, self.block_rows), metadata, _SCHEMA,
                         per_task_row_limit)]

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    @property
    def supports_distributed_reads(self) -> bool:
        return False  # Ray Data then runs the read on the driver's node: the input paths are the driver's


def _read(reader: SeedReader, committed_ref: ray.ObjectRef, block_rows: int) -> Iterator[pa.Table]:
    committed: KeySet = ray.get(committed_ref)
    rows: list[tuple[bytes | None, int, int]] = []
    reported = 0

    def problems() -> None:
        nonlocal reported
        for problem in reader.problems[reported:MAX_REPORTED_PROBLEMS]:
            rows.append((pickle.dumps(problem), reader.read, reader.skipped))
        reported = len(reader.problems)

    for record in reader:
        problems()
        if record["work_key"] not in committed:
            rows.append((pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL), reader.read, reader.skipped))
        if len(rows) >= block_rows:
            yield _block(rows)
            rows = []
    problems()
    rows.append((None, reader.read, reader.skipped))
    yield _block(rows)


def _block(rows: list[tuple[bytes | None, int, int]]) -> pa.Table:
    return pa.Table.from_pylist([dict(zip(_SCHEMA.names, row, strict=True)) for row in rows], schema=_SCHEMA)
