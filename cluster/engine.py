"""vLLM engine replicas as Ray actors, and the pool every stage of a run shares.

Each :class:`EngineReplica` holds one vLLM engine, stepped by its :class:`EngineLoop` (continuous
batching: requests join and leave the running batch at every step, so one long generation never
stalls the others). The
driver keeps many requests in flight per replica through :class:`EnginePool`, always sending the
next request to the least-loaded replica, so there is no barrier between chunks of work and no
replica waits for the slowest one.

Two kinds of failure, two answers:

* A record's own problem never kills the run: a prompt longer than the model's context comes back
  as a completion with ``finish_reason="prompt_too_long"`` and a request vLLM rejects as
  ``"error"``, and the stages route those records to ``rejected/``.
* An infrastructure failure is never a record's fault, so it never becomes a reject: an engine
  that dies inside its actor (vLLM's ``EngineDeadError``) makes the actor exit so that Ray restarts
  it; an actor or node that is lost, or a replica that holds requests and finishes none for
  ``stall_timeout_s`` (a hung engine, which is then killed), takes the replica out of routing until
  it answers again, and each of its requests is sent again to a healthy replica. A request that
  fails ``request_attempts`` times, or finds no replica left, raises :class:`EngineUnavailable`,
  which stops the run with its committed work intact.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import queue
import socket
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import ray
from ray.exceptions import (
    ActorUnavailableError,
    NodeDiedError,
    ObjectLostError,
    OutOfMemoryError,
    RayActorError,
    WorkerCrashedError,
)

log = logging.getLogger(__name__)

# vLLM 0.28's CPU model runner cannot rewind per-request generators when it discards a partially
# prefilled token ("CPU Generator does not use offset"), so on CPU the per-request seed is left to
# the engine-wide seed. On GPU the per-request seed is passed through as given.
_CPU_UNSUPPORTED_SAMPLING = ("seed",)


@dataclass(frozen=True)
class EngineLimits:
    """How long to wait and how often to retry (the spec's ``failures`` section)."""

    request_attempts: int = 4
    replica_restarts: int = 10
    stall_timeout_s: float = 600.0
    startup_timeout_s: float = 1800.0


class EngineFailed(RuntimeError):
    """Raised inside a replica whose engine died; the replica exits so that Ray restarts it."""


class EngineUnavailable(RuntimeError):
    """No replica could serve a request: the run stops, its committed work intact."""


class ResourcesUnavailable(RuntimeError):
    """The cluster cannot hold the replicas the spec asks for."""


# A replica lost, not a record's fault: the request goes to another replica.
INFRASTRUCTURE_ERRORS = (RayActorError, WorkerCrashedError, NodeDiedError, ObjectLostError,
                         OutOfMemoryError, EngineFailed)

# On a CPU backend the model computes in the replica's process, or in vLLM's own processes beside
# it (see replica_environment). sdg's processes around them (the driver; the replica's request
# handling when the engine has processes of its own) work from deep queues and can wait, so they
# yield the CPU to the engine: on 2 cores, +12% tokens/s. Processes started before the renice keep
# their priority.
CPU_FRONTEND_NICENESS = 10


def yield_cpu_to_engine() -> None:
    current = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, max(current, CPU_FRONTEND_NICENESS))


def _inspect_model_classes_in_this_process() -> None:
    """The first time vLLM meets a model class (per machine and vLLM version: it caches the
    answer under VLLM_CACHE_ROOT), it inspects the class in a new Python process, so that
    importing it cannot initialise CUDA in the caller. That process imports vLLM again, ~10 s of
    a CPU replica's first start (benchmarks/bench_startup.py, cold). A CPU replica has no CUDA to
    protect and imports the same class a moment later to load the model, so it inspects it here."""
    from vllm.model_executor.models import registry

    registry._run_in_subprocess = lambda inspect: inspect()


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    finish_reason: str  # vLLM's "stop" / "length", or "prompt_too_long" / "error"
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


class EngineReplica:
    """One vLLM engine. Runs as an async Ray actor; see :func:`start_replicas`."""

    def __init__(self, engine_args: dict[str, Any], log_path: str | None = None):
        if log_path:
            _output_to(log_path)  # before vLLM starts its processes, which inherit it
        started = time.monotonic()
        from vllm import EngineArgs, LLMEngine
        from vllm.config import StructuredOutputsConfig
        from vllm.platforms import current_platform
        from vllm.usage.usage_lib import UsageContext

        imported = time.monotonic()
        defaults = {"disable_log_stats": True}
        self.on_cpu = current_platform.is_cpu()
        if self.on_cpu:
            _inspect_model_classes_in_this_process()
            # torch.compile on CPU costs more start-up than it returns in decoding speed, even
            # from a warm compile cache (benchmarks/bench_startup.py); a GPU keeps vLLM's default.
            defaults["enforce_eager"] = True
        # An offline batch workload: vLLM's LLM-class defaults (larger max_num_seqs and
        # max_num_batched_tokens than its server defaults; no periodic stats) fit it, as they
        # fit the bare LLM.generate sdg is measured against.
        # Structured outputs are parsed, never read by people: compact JSON, so that a model cannot
        # pad an object with whitespace until max_tokens. vLLM 0.28 takes this per engine only, and
        # only with a named backend: xgrammar, its first choice. The spec's engine_args replace it.
        structured = engine_args.get("structured_outputs_config") or {"backend": "xgrammar",
                                                                      "disable_any_whitespace": True}
        args = EngineArgs(**{**defaults, **engine_args,
                             "structured_outputs_config": StructuredOutputsConfig(**structured)})
        engine = LLMEngine.from_engine_args(args, usage_context=UsageContext.LLM_CLASS)
        self.startup = {"import_s": imported - started, "engine_init_s": time.monotonic() - imported}
        self.tokenizer = engine.get_tokenizer()
        self.max_model_len = engine.model_config.max_model_len
        self.engine = EngineLoop(engine)
        if self.on_cpu and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
            yield_cpu_to_engine()  # the engine computes in vLLM's processes, not this one

    def ping(self) -> dict[str, Any]:
        """Answers, with :meth:`placement`, once the replica (re)started and its engine is alive."""
        if self.engine.error:
            self._exit_for_restart()
            raise self.engine.failure()
        return self.placement()

    def placement(self) -> dict[str, Any]:
        """Where this replica runs: its Ray node, that node's address and host name, and what it
        holds there (``{"CPU": 1.0}``, ``{"GPU": 2.0}``). Which node made which records is lineage,
        and a slow node is found by it."""
        context = ray.get_runtime_context()
        return {"node_id": context.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
                "host": socket.gethostname(), "resources": context.get_assigned_resources()}

    def _exit_for_restart(self) -> None:
        # Ray restarts an actor whose process dies, not one that exits on purpose
        # (ray.actor.exit_actor): so the process ends itself, a moment after this reply is sent.
        asyncio.get_running_loop().call_later(0.5, os._exit, 1)

    def info(self) -> dict[str, Any]:
        return {
            "max_model_len": self.max_model_len,
            "user_turn_prefix": self._user_turn_prefix(),
            "chat_template": getattr(self.tokenizer, "chat_template", None),
            "on_cpu": self.on_cpu,
            "startup": self.startup,
            "placement": self.placement(),
        }

    def _user_turn_prefix(self) -> str | None:
        """The text the chat template puts before a user's words (Magpie's pre-query template)."""
        marker = "\x00SDG_USER\x00"
        try:
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": marker}], tokenize=False, add_generation_prompt=False
            )
        except Exception:  # noqa: BLE001 - a model without a chat template
            return None
        prefix = rendered.split(marker)[0] if marker in rendered else ""
        return prefix or None

    async def generate_batch(self, requests: list[tuple[str | list[dict[str, str]], dict[str, Any]]]):
        """Serve several requests of one actor call (a Ray streaming generator): yields the
        ``(position, completions)`` pairs of whatever finished together, as they finish."""
        finished: asyncio.Queue[tuple[int, asyncio.Task]] = asyncio.Queue()
        for position, (prompt, sampling) in enumerate(requests):
            task = asyncio.ensure_future(self.generate(prompt, sampling))
            task.add_done_callback(lambda done, position=position: finished.put_nowait((position, done)))
        remaining = len(requests)
        while remaining:
            ready = [await finished.get()]
            while not finished.empty():
                ready.append(finished.get_nowait())
            remaining -= len(ready)
            yield [(position, task.result()) for position, task in ready]  # a dead engine raises here

    async def generate(
        self, prompt: str | list[dict[str, str]], sampling: dict[str, Any]
    ) -> list[Completion]:
        """Complete a raw text prompt, or a ``messages`` list through the chat template."""
        from vllm import SamplingParams, TokensPrompt
        from vllm.exceptions import VLLMValidationError
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        if not isinstance(prompt, str):
            # The template's text carries its special tokens, so it is encoded without adding more.
            prompt = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        token_ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        n = int(sampling.get("n", 1))
        room = self.max_model_len - len(token_ids)
        if room <= 0:
            return [Completion("", "prompt_too_long", len(token_ids), 0,
                               f"prompt has {len(token_ids)} tokens, max_model_len is {self.max_model_len}")] * n
        params = {k: v for k, v in sampling.items()
                  if not (self.on_cpu and k in _CPU_UNSUPPORTED_SAMPLING)}
        params["max_tokens"] = min(int(params.get("max_tokens") or room), room)
        params["output_kind"] = RequestOutputKind.FINAL_ONLY  # no per-token streaming overhead
        # vLLM detokenises every request incrementally, token by token, which only stop strings
        # need; without them the text is decoded once at the end, at a fraction of the CPU.
        decode_at_end = not params.get("stop")
        params["detokenize"] = not decode_at_end
        try:
            if "structured_outputs" in params:  # sent as a plain mapping of vLLM's own names
                params["structured_outputs"] = StructuredOutputsParams(**params["structured_outputs"])
            final = await self.engine.submit(TokensPrompt(prompt_token_ids=token_ids), SamplingParams(**params))
        except EngineFailed:
            self._exit_for_restart()
            raise
        except (ValueError, TypeError, VLLMValidationError) as exc:  # vLLM's per-request validation errors
            return [Completion("", "error", len(token_ids), 0, str(exc))] * n
        skip_special_tokens = params.get("skip_special_tokens", True)
        return [
            Completion(self.tokenizer.decode(o.token_ids, skip_special_tokens=skip_special_tokens)
                       if decode_at_end else o.text,
                       o.finish_reason or "stop", len(token_ids), len(o.token_ids))
            for o in final.outputs
        ]

    def shutdown(self) -> None:
        self.engine.stop()


class EngineLoop:
    """Drives a vLLM ``LLMEngine`` from a thread of its own, as ``LLM.generate`` drives it: the
    requests submitted since the last step join the running batch, then one step runs, and the
    requests it finished go back to the actor's event loop. Only this thread touches the engine."""

    def __init__(self, engine: Any):
        self._engine = engine
        self._submitted: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: dict[str, asyncio.Future] = {}  # request id -> its caller's future
        self._loop: asyncio.AbstractEventLoop | None = None
        self.error: str | None = None  # why the engine died, once it has
        self._thread = threading.Thread(target=self._run, name="sdg-engine-loop", daemon=True)
        self._thread.start()

    def submit(self, prompt: Any, params: Any) -> asyncio.Future:
        """A future of the request's final ``RequestOutput``. It raises vLLM's validation error
        for a bad request, :class:`EngineFailed` once the engine is dead."""
        self._loop = self._loop or asyncio.get_running_loop()
        future = self._loop.create_future()
        if self.error:
            future.set_exception(self.failure())
        else:
            self._submitted.put((uuid.uuid4().hex, prompt, params, future))
        return future

    def stop(self) -> None:
        self._submitted.put(None)
        self._thread.join(timeout=60)
        self._engine.engine_core.shutdown()

    def _run(self) -> None:
        try:
            while self._add_submitted(wait=not self._engine.has_unfinished_requests()):
                finished = [output for output in self._engine.step() if output.finished]
                if finished:
                    self._loop.call_soon_threadsafe(self._hand_back, finished)
        except Exception as exc:  # noqa: BLE001 - a dead engine: every waiting caller is told
            log.exception("the vLLM engine of this replica died")
            self.error = f"{type(exc).__name__}: {exc}"
            self._loop.call_soon_threadsafe(self._fail_all)

    def _add_submitted(self, wait: bool) -> bool:
        """Add every request submitted since the last step, waiting for one if the engine is
        idle. False once :meth:`stop` was called."""
        from vllm.exceptions import VLLMValidationError

        try:
            submitted = self._submitted.get(block=wait)
            while submitted is not None:
                request_id, prompt, params, future = submitted
                try:
                    self._engine.add_request(request_id, prompt, params)
                    self._waiting[request_id] = future
                except (ValueError, TypeError, VLLMValidationError) as exc:
                    self._loop.call_soon_threadsafe(future.set_exception, exc)
                submitted = self._submitted.get_nowait()
            return False
        except queue.Empty:
            return True

    def _hand_back(self, finished: list[Any]) -> None:
        for output in finished:
            future = self._waiting.pop(output.request_id)
            if not future.done():  # not cancelled by a caller that gave up
                future.set_result(output)

    def _fail_all(self) -> None:
        """Runs in the event loop, after the engine thread ended: every request it held, and
        every one submitted since, fails."""
        error = self.failure()
        while not self._submitted.empty():
            if (submitted := self._submitted.get_nowait()) is not None:
                self._waiting[submitted[0]] = submitted[3]
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()

    def failure(self) -> EngineFailed:
        return EngineFailed(f"the vLLM engine of this replica died: {self.error}")


def _output_to(path: str) -> None:
    """This process's stdout and stderr, and so its children's (vLLM's engine core and workers),
    appended to ``path``: the run's log, not the driver's terminal. Not a terminal, so vLLM writes
    no colour codes."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (1, 2):
        os.dup2(fd, stream)
    os.close(fd)


def request_seed(seed: int, key: str) -> int:
    """The seed of one request: distinct per request, the same on every rerun and retry.

    With one spec-wide seed sent as it is, every request with the same prompt (each Magpie
    pre-query, each self-chat opened on the same topic) would sample the same text on a GPU.
    """
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass
class _LoopState:
    """What the pool keeps per asyncio event loop (a pool outlives a run's loop: several runs in a
    notebook or a test session; asyncio primitives belong to one loop)."""

    slots: asyncio.Semaphore
    health_changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    recovering: dict[int, asyncio.Task] = field(default_factory=dict)  # replica -> its ping loop
    outgoing: dict[int, list[tuple[Any, dict[str, Any], asyncio.Future]]] = field(default_factory=dict)
    receiving: set[asyncio.Task] = field(default_factory=set)  # one per actor call in flight
    watchdog: asyncio.Task | None = None


class EnginePool:
    """The run's replicas, shared by all its stages. The only way stages reach the model."""

    def __init__(self, replicas: list[Any], info: dict[str, Any], max_in_flight_per_replica: int,
                 limits: EngineLimits = EngineLimits()):
        self.replicas = replicas
        self.limits = limits
        self.max_model_len: int = info["max_model_len"]
        self.user_turn_prefix: str | None = info["user_turn_prefix"]
        self.chat_template: str | None = info["chat_template"]  # the model's, from its tokenizer
        self.capacity = max_in_flight_per_replica * len(replicas)
        self._in_flight = [0] * len(replicas)
        self._last_progress = [time.monotonic()] * len(replicas)
        self._healthy = set(range(len(replicas)))
        self._dead: set[int] = set()  # restarts exhausted: never back
        # Every token served, whichever stage asked: a stage may make several requests per record
        # (evol_instruct rewrites, judges and answers), so records alone undercount the work.
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.infrastructure_failures = 0  # requests sent again because their replica was lost
        # The same per replica, sampled by gen/telemetry.py for the run's time series and Ray metrics.
        self.completion_tokens_by_replica = [0] * len(replicas)
        self.failures_by_replica = [0] * len(replicas)
        self.startup: dict[str, float] = {}  # where the start-up time went (LaunchedReplicas.ready)
        # Per replica, where it has served (EngineReplica.placement): where it started, then one
        # more each time Ray restarted it on another node (LaunchedReplicas.ready, _wait_until_back).
        self.placements: list[list[dict[str, Any]]] = [[] for _ in replicas]
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()

    async def chat(self, messages: list[dict[str, str]], sampling: dict[str, Any], key: str) -> list[Completion]:
        """Answer ``messages`` through the model's chat template. ``key`` names the request
        uniquely and stably (record id and purpose): its seed is derived from it."""
        return await self._submit(messages, sampling, key)

    async def complete(self, prompt: str, sampling: dict[str, Any], key: str) -> list[Completion]:
        """Continue a raw text ``prompt``; ``key`` as for :meth:`chat`."""
        return await self._submit(prompt, sampling, key)

    async def _submit(self, prompt, sampling: dict[str, Any], key: str) -> list[Completion]:
        if sampling.get("seed") is not None:
            sampling = {**sampling, "seed": request_seed(sampling["seed"], key)}
        state = self._state()
        async with state.slots:
            for attempt in range(1, self.limits.request_attempts + 1):
                index = await self._pick(state)
                try:
                    completions = await self._call(index, prompt, sampling, state)
                    break
                except INFRASTRUCTURE_ERRORS as exc:
                    self.infrastructure_failures += 1
                    self.failures_by_replica[index] += 1
                    log.warning("replica %d failed a request (attempt %d of %d): %s", index, attempt,
                                self.limits.request_attempts, _first_line(exc))
                    self._take_out(index, state)
            else:
                raise EngineUnavailable(
                    f"a request failed on {self.limits.request_attempts} replicas in a row (failures."
                    "request_attempts); the engines keep dying: see the replicas' logs (DIR/logs/replica-N.log)")
        self.prompt_tokens += completions[0].prompt_tokens if completions else 0
        tokens = sum(c.completion_tokens for c in completions)
        self.completion_tokens += tokens
        self.completion_tokens_by_replica[index] += tokens
        return completions

    def in_flight(self) -> list[int]:
        """Requests each replica holds now."""
        return list(self._in_flight)

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopState(asyncio.Semaphore(self.capacity))
            state.watchdog = loop.create_task(self._watch_for_stalls())  # ends with the loop
        return state

    async def _pick(self, state: _LoopState) -> int:
        """The least-loaded healthy replica; waits while every replica is restarting."""
        async with state.health_changed:
            while not self._healthy:
                if len(self._dead) == len(self.replicas):
                    raise EngineUnavailable("every engine replica is dead (failures.replica_restarts "
                                            "used up); see the replicas' logs (DIR/logs/replica-N.log)")
                for index in set(range(len(self.replicas))) - self._dead:
                    self._watch_recovery(index, state)  # taken out during an earlier run's loop
                await state.health_changed.wait()
        return min(self._healthy, key=self._in_flight.__getitem__)

    async def _call(self, index: int, prompt, sampling: dict[str, Any], state: _LoopState) -> list[Completion]:
        """One request on one replica (watched by :meth:`_watch_for_stalls`)."""
        if self._in_flight[index] == 0:
            self._last_progress[index] = time.monotonic()
        self._in_flight[index] += 1
        try:
            return await self._send(index, prompt, sampling, state)
        finally:
            self._in_flight[index] -= 1

    async def _watch_for_stalls(self) -> None:
        """A replica that holds requests and finishes none for ``stall_timeout_s`` is hung: it is
        killed, so that Ray restarts it and its requests fail over."""
        timeout = self.limits.stall_timeout_s
        while True:
            await asyncio.sleep(min(timeout / 4, 5.0))
            for index, replica in enumerate(self.replicas):
                if self._in_flight[index] and time.monotonic() - self._last_progress[index] >= timeout:
                    log.error("replica %d finished no request for %.0f s (failures.stall_timeout_s): "
                              "killing it so Ray restarts it", index, timeout)
                    ray.kill(replica, no_restart=False)
                    self._last_progress[index] = time.monotonic()  # one kill per stall

    def _send(self, index: int, prompt, sampling: dict[str, Any], state: _LoopState) -> asyncio.Future:
        """Queue one request for replica ``index``. The requests queued during one turn of the
        event loop go in one actor call: a Ray call costs the driver about a millisecond of CPU,
        which per request would be a large share of what a small model's request costs."""
        loop = asyncio.get_running_loop()
        reply = loop.create_future()
        if index not in state.outgoing:
            state.outgoing[index] = []
            loop.call_soon(self._flush, index, state)
        state.outgoing[index].append((prompt, sampling, reply))
        return reply

    def _flush(self, index: int, state: _LoopState) -> None:
        batch = state.outgoing.pop(index)
        stream = self.replicas[index].generate_batch.options(num_returns="streaming").remote(
            [(prompt, sampling) for prompt, sampling, _ in batch])
        receiver = asyncio.ensure_future(self._receive(index, stream, [reply for _, _, reply in batch]))
        state.receiving.add(receiver)
        receiver.add_done_callback(state.receiving.discard)

    async def _receive(self, index: int, stream, replies: list[asyncio.Future]) -> None:
        """Hand each request of one actor call its completions as the replica streams them back;
        when the replica fails, every request still waiting gets the error (and is sent again)."""
        try:
            async for ref in stream:
                finished = await ref
                self._last_progress[index] = time.monotonic()
                for position, completions in finished:
                    if not replies[position].done():  # not given up on by a cancelled run
                        replies[position].set_result(completions)
        except Exception as exc:  # noqa: BLE001 - each waiting request decides what the error means
            for reply in replies:
                if not reply.done():
                    reply.set_exception(exc)

    def _take_out(self, index: int, state: _LoopState) -> None:
        """Route nothing to ``index`` until it answers a ping again (Ray is restarting it)."""
        self._healthy.discard(index)
        self._watch_recovery(index, state)

    def _watch_recovery(self, index: int, state: _LoopState) -> None:
        if index not in state.recovering and index not in self._dead:
            state.recovering[index] = asyncio.create_task(self._recover(index, state))

    async def _recover(self, index: int, state: _LoopState) -> None:
        try:
            await self._wait_until_back(index)
        finally:
            del state.recovering[index]
        async with state.health_changed:
            state.health_changed.notify_all()

    async def _wait_until_back(self, index: int) -> None:
        """Ping ``index`` until it is healthy again, or dead for good."""
        deadline = time.monotonic() + self.limits.startup_timeout_s
        while True:
            try:
                placement = await asyncio.wait_for(asyncio.wrap_future(self.replicas[index].ping.remote().future()),
                                                   max(deadline - time.monotonic(), 1))
                self._healthy.add(index)
                served_on = self.placements[index]
                if not served_on or served_on[-1]["node_id"] != placement["node_id"]:
                    served_on.append(placement)
                log.warning("replica %d is back in service on %s", index, describe_placement(placement))
                break
            except (EngineFailed, ActorUnavailableError):
                await asyncio.sleep(1)  # the replica is exiting, or Ray is restarting it
            except (TimeoutError, RayActorError) as exc:
                log.error("replica %d is gone for good: %s", index, _first_line(exc))
                self._dead.add(index)
                break

    def shutdown(self) -> None:
        # Every replica's engine stops at once (each takes seconds), each for at most a minute;
        # a replica already gone answers with an error, which ray.wait counts as done.
        stopping = [replica.shutdown.remote() for replica in self.replicas]
        ray.wait(stopping, num_returns=len(stopping), timeout=60)
        for replica in self.replicas:
            ray.kill(replica)


def describe_placement(placement: dict[str, Any]) -> str:
    """``host (ip, node 1a2b3c4d)``: enough to find the node in ``ray status`` and the dashboard."""
    return f"{placement['host']} ({placement['node_ip']}, node {placement['node_id'][:8]})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class EngineShape(NamedTuple):
    """How one engine of a spec is laid out: its replicas and what each takes."""

    replicas: int
    tensor_parallel_size: int = 1
    num_cpus_per_replica: int | None = None  # on a cluster without GPUs; None: an even share


def cluster_nodes() -> list[dict[str, float]]:
    """The resources (``CPU``, ``GPU``, ...) of each live node of the connected Ray cluster."""
    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def replica_resources(nodes: list[dict[str, float]], engines: dict[str, EngineShape]) -> dict[str, dict[str, float]]:
    """What one replica of each engine asks Ray for: ``tensor_parallel_size`` GPUs on a GPU cluster
    (vLLM then runs its tensor-parallel workers as processes on those GPUs); on a cluster without
    GPUs, ``num_cpus_per_replica`` CPUs, by default the most CPUs that every replica of every
    engine can have at once, so that one replica on one machine computes on all its cores.

    ``nodes``: each node's resources (:func:`cluster_nodes`). ``engines``: the spec field of each
    engine (``model``, ``models.1``) -> its shape. Every engine's replicas take their own GPUs or
    CPUs, and a replica is one actor, so all its GPUs or CPUs are on one node. The run refuses at
    once when the cluster cannot hold them (Ray would wait forever): when the whole cluster has
    too few, or when its nodes, each holding whole replicas, cannot hold an engine's replicas (8
    GPUs on 8 nodes hold no replica of tensor_parallel_size 2). These checks are exact for one
    engine; for several they refuse only what surely cannot fit.
    """
    if any(node.get("GPU", 0) > 0 for node in nodes):
        unit, key, size_field = "GPU", "num_gpus", "tensor_parallel_size"
        each = {field: shape.tensor_parallel_size for field, shape in engines.items()}
    else:
        unit, key, size_field = "CPU", "num_cpus", "num_cpus_per_replica"
        # The engines that set their number take it first; the others share what is left.
        left = _cpus_left([int(node.get("CPU", 0)) for node in nodes],
                          [(shape.replicas, shape.num_cpus_per_replica)
                           for shape in engines.values() if shape.num_cpus_per_replica])
        share = _even_cpu_share(left, sum(shape.replicas for shape in engines.values()
                                          if not shape.num_cpus_per_replica))
        each = {field: shape.num_cpus_per_replica or share for field, shape in engines.items()}
    have = sum(node.get(unit, 0) for node in nodes)
    needed = sum(shape.replicas * each[field] for field, shape in engines.items())
    if needed > have:
        asked = " + ".join(f"{field}.replicas ({shape.replicas}) x {field}.{size_field} ({each[field]})"
                           for field, shape in engines.items())
        raise ResourcesUnavailable(f"{asked} needs {needed:g} {unit}s, the Ray cluster has {have:g}: "
                                   "lower them or add nodes")
    for spec_field, shape in engines.items():
        room = sum(int(node.get(unit, 0) // each[spec_field]) for node in nodes)
        if room < shape.replicas:
            per_node = ", ".join(f"{node.get(unit, 0):g}" for node in nodes)
            raise ResourcesUnavailable(
                f"{spec_field}.replicas ({shape.replicas}) x {spec_field}.{size_field} ({each[spec_field]}): each "
                f"replica needs its {each[spec_field]} {unit}s on one node, and the Ray cluster's nodes "
                f"({per_node} {unit}s) hold {room} such replicas: lower them or add nodes with more {unit}s")
    return {field: {key: count} for field, count in each.items()}


def _cpus_left(node_cpus: list[int], taken: list[tuple[int, int]]) -> list[int]:
    """Each node's CPUs after ``taken`` (replicas, CPUs each) are placed, each replica on the node
    with the most CPUs left (where Ray's SPREAD would put it, near enough)."""
    left = list(node_cpus)
    for replicas, cpus in taken:
        for _ in range(replicas):
            fullest = max(range(len(left)), key=left.__getitem__)
            left[fullest] = max(left[fullest] - cpus, 0)
    return left


def _even_cpu_share(node_cpus: list[int], replicas: int) -> int:
    """The most CPUs each of ``replicas`` replicas can take with all of them placed on these nodes
    (at least 1)."""
    share = max(1, sum(node_cpus) // max(replicas, 1))
    while share > 1 and sum(cpus // share for cpus in node_cpus) < replicas:
        share -= 1
    return share


def start_replicas(
    engine_args: dict[str, Any], replicas: int, tensor_parallel_size: int,
    max_in_flight_per_replica: int, limits: EngineLimits = EngineLimits(), num_cpus_per_replica: int | None = None,
) -> EnginePool:
    """Start ``replicas`` engines of one model and wait until they serve; see :func:`launch_replicas`."""
    [resources] = replica_resources(cluster_nodes(), {"model": EngineShape(replicas, tensor_parallel_size,
                                                                           num_cpus_per_replica)}).values()
    return launch_replicas(engine_args, replicas, resources, max_in_flight_per_replica, limits).ready()


def launch_replicas(
    engine_args: dict[str, Any], replicas: int, resources: dict[str, float],
    max_in_flight_per_replica: int, limits: EngineLimits = EngineLimits(), log_dir: str | None = None,
    log_name: str = "replica",
) -> LaunchedReplicas:
    """Place ``replicas`` engines, each taking ``resources`` (:func:`replica_resources`), and let
    them load while the caller does other work (a run reads its seeds and builds its filters
    meanwhile).

    ``log_dir``: each replica's output goes to ``{log_name}-N.log`` there (a path on the replica's
    node); by default it stays in Ray's worker logs.
    """
    # A replica whose process dies (OOM, a crashed engine, a lost node) is restarted by Ray, which
    # reloads the model. Its requests are not retried by Ray: the pool sends them to a healthy replica.
    # Spread over the nodes: a lost node takes as few replicas with it as the cluster allows.
    actor_cls = ray.remote(**resources, max_concurrency=max(1000, 2 * max_in_flight_per_replica),
                           max_restarts=limits.replica_restarts, max_task_retries=0, scheduling_strategy="SPREAD",
                           runtime_env={"env_vars": replica_environment(resources, engine_args)})(EngineReplica)
    handles = [actor_cls.remote(engine_args, f"{log_dir}/{log_name}-{index}.log" if log_dir else None)
               for index in range(replicas)]
    return LaunchedReplicas(handles, engine_args["model"], "num_gpus" in resources, max_in_flight_per_replica,
                            limits)


def replica_environment(resources: dict[str, float], engine_args: dict[str, Any]) -> dict[str, str]:
    """The environment variables a replica's engine runs with."""
    on_cpu = "num_gpus" not in resources
    vllm = {
        # vLLM's per-step INFO lines would drown the run's own progress in the driver's output.
        "VLLM_LOGGING_LEVEL": "WARNING",
        # Where vLLM's engine core and model worker run: "0" in the replica's own process, "1" in
        # processes of their own. On CPU with one worker, one process: no second import of vLLM
        # (~12 s of start-up) and no ZeroMQ hop for every step's outputs; the layout of the bare
        # one-process `LLM` (benchmarks/bench_throughput.py). On a GPU, or over several workers,
        # vLLM's default: its engine core schedules the next step while the replica handles the
        # last one's outputs, which a GPU's short steps need.
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0" if on_cpu and engine_args.get("tensor_parallel_size", 1) == 1 else "1",
    }
    # The driver's own values of vLLM's variables win: `VLLM_LOGGING_LEVEL=INFO sdg run ...`.
    env = {name: os.environ.get(name, value) for name, value in vllm.items()}
    if on_cpu:
        # The engine computes with as many threads as the replica holds CPUs. Ray sets this only
        # where the environment has not.
        env["OMP_NUM_THREADS"] = str(int(resources["num_cpus"]))
    return env


@dataclass
class LaunchedReplicas:
    """Replicas placed and loading their model."""

    handles: list[Any]
    model: str
    on_gpus: bool
    max_in_flight_per_replica: int
    limits: EngineLimits
    launched_at: float = field(default_factory=time.monotonic)

    def ready(self) -> EnginePool:
        """Wait until every replica serves; raises here if an engine fails to start."""
        try:
            infos = ray.get([h.info.remote() for h in self.handles],
                            timeout=max(self.limits.startup_timeout_s - (time.monotonic() - self.launched_at), 1))
        except ray.exceptions.GetTimeoutError:
            self.cancel()
            raise ResourcesUnavailable(
                f"the engine replicas were not ready after {self.limits.startup_timeout_s:g} s "
                f"(failures.startup_timeout_s); free in the cluster now: {ray.available_resources()}") from None
        except BaseException:
            self.cancel()
            raise
        if infos[0]["on_cpu"]:
            yield_cpu_to_engine()
        nodes = {info["placement"]["node_id"] for info in infos}
        # On one node there is nothing to tell; over several, which replica is where (also in the manifest).
        spread = "" if len(nodes) == 1 else f" on {len(nodes)} nodes: " + "; ".join(
            f"replica {index} on {describe_placement(info['placement'])}" for index, info in enumerate(infos))
        log.info("started %d vLLM replica(s) of %s (%s)%s", len(self.handles), self.model,
                 "GPU" if self.on_gpus else "CPU", spread)
        pool = EnginePool(self.handles, infos[0], self.max_in_flight_per_replica, self.limits)
        pool.placements = [[info["placement"]] for info in infos]
        slowest = max(infos, key=lambda info: sum(info["startup"].values()))["startup"]
        pool.startup = {f"vllm_{name}": round(seconds, 3) for name, seconds in slowest.items()}
        return pool

    def cancel(self) -> None:
        for handle in self.handles:
            ray.kill(handle)
