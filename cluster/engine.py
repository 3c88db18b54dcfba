"""vLLM engine replicas as Ray actors, and the pool every stage of a run shares.

Each :class:`EngineReplica` holds one vLLM ``AsyncLLM`` (continuous batching: requests join and
leave the running batch at every step, so one long generation never stalls the others). The
driver keeps many requests in flight per replica through :class:`EnginePool`, always sending the
next request to the least-loaded replica, so there is no barrier between chunks of work and no
replica waits for the slowest one.

Per-record problems never kill the run: a prompt longer than the model's context comes back as a
completion with ``finish_reason="prompt_too_long"`` and a request vLLM rejects as ``"error"``, and
the stages route those records to ``rejected/``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
import weakref
from dataclasses import dataclass
from typing import Any

import ray

log = logging.getLogger(__name__)

# vLLM 0.28's CPU model runner cannot rewind per-request generators when it discards a partially
# prefilled token ("CPU Generator does not use offset"), so on CPU the per-request seed is left to
# the engine-wide seed. On GPU the per-request seed is passed through as given.
_CPU_UNSUPPORTED_SAMPLING = ("seed",)

REPLICA_RESTARTS = 3

# On a CPU backend the model runs in vLLM's own processes (a worker bound to its cores and an
# engine core that polls it). sdg's processes around them (the replica's request handling, the
# driver) work from deep queues and can wait, so they yield the CPU to the engine: on 2 cores,
# +12% tokens/s. vLLM's processes, started before the renice, keep their priority.
CPU_FRONTEND_NICENESS = 10


def yield_cpu_to_engine() -> None:
    current = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, max(current, CPU_FRONTEND_NICENESS))


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    finish_reason: str  # vLLM's "stop" / "length", or "prompt_too_long" / "error"
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


class EngineReplica:
    """One vLLM engine. Runs as an async Ray actor; see :func:`start_replicas`."""

    def __init__(self, engine_args: dict[str, Any]):
        from vllm import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        # An offline batch workload: vLLM's LLM-class defaults (larger max_num_seqs and
        # max_num_batched_tokens than its server defaults; no periodic stats) fit it, as they
        # fit the bare LLM.generate sdg is measured against.
        args = AsyncEngineArgs(**{"disable_log_stats": True, **engine_args})
        self.engine = AsyncLLM.from_engine_args(args, usage_context=UsageContext.LLM_CLASS)
        self.tokenizer = self.engine.get_tokenizer()
        self.max_model_len = self.engine.model_config.max_model_len
        self.on_cpu = current_platform.is_cpu()
        if self.on_cpu:
            yield_cpu_to_engine()

    def info(self) -> dict[str, Any]:
        return {
            "max_model_len": self.max_model_len,
            "user_turn_prefix": self._user_turn_prefix(),
            "chat_template": getattr(self.tokenizer, "chat_template", None),
            "on_cpu": self.on_cpu,
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

    async def generate(
        self, prompt: str | list[dict[str, str]], sampling: dict[str, Any]
    ) -> list[Completion]:
        """Complete a raw text prompt, or a ``messages`` list through the chat template."""
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind

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
        try:
            final = None
            async for output in self.engine.generate(
                TokensPrompt(prompt_token_ids=token_ids),
                SamplingParams(**params),
                request_id=uuid.uuid4().hex,
            ):
                final = output
        except (ValueError, TypeError) as exc:  # vLLM's per-request validation errors
            return [Completion("", "error", len(token_ids), 0, str(exc))] * n
        return [
            Completion(o.text, o.finish_reason or "stop", len(token_ids), len(o.token_ids))
            for o in final.outputs
        ]

    def shutdown(self) -> None:
        self.engine.shutdown()


class EnginePool:
    """The run's replicas, shared by all its stages. The only way stages reach the model."""

    def __init__(self, replicas: list[Any], info: dict[str, Any], max_in_flight_per_replica: int):
        self.replicas = replicas
        self.max_model_len: int = info["max_model_len"]
        self.user_turn_prefix: str | None = info["user_turn_prefix"]
        self.chat_template: str | None = info["chat_template"]  # the model's, from its tokenizer
        self.capacity = max_in_flight_per_replica * len(replicas)
        self._in_flight = [0] * len(replicas)
        # Every token served, whichever stage asked: a stage may make several requests per record
        # (evol_instruct rewrites, judges and answers), so records alone undercount the work.
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary())

    async def chat(self, messages: list[dict[str, str]], sampling: dict[str, Any]) -> list[Completion]:
        return await self._submit(messages, sampling)

    async def complete(self, prompt: str, sampling: dict[str, Any]) -> list[Completion]:
        return await self._submit(prompt, sampling)

    async def _submit(self, prompt, sampling) -> list[Completion]:
        # One semaphore per event loop: a pool outlives a run's loop (several runs in a notebook,
        # a test session), and an asyncio semaphore may only be waited on from one loop.
        loop = asyncio.get_running_loop()
        slots = self._slots.get(loop) or self._slots.setdefault(loop, asyncio.Semaphore(self.capacity))
        async with slots:
            index = min(range(len(self.replicas)), key=self._in_flight.__getitem__)
            self._in_flight[index] += 1
            try:
                completions = await self.replicas[index].generate.remote(prompt, sampling)
            finally:
                self._in_flight[index] -= 1
        self.prompt_tokens += completions[0].prompt_tokens if completions else 0
        self.completion_tokens += sum(c.completion_tokens for c in completions)
        return completions

    def shutdown(self) -> None:
        for replica in self.replicas:
            try:
                ray.get(replica.shutdown.remote(), timeout=60)
            except Exception:  # noqa: BLE001 - best effort: the actor may already be gone
                pass
            ray.kill(replica)


def start_replicas(
    engine_args: dict[str, Any], replicas: int, tensor_parallel_size: int,
    max_in_flight_per_replica: int,
) -> EnginePool:
    """Start ``replicas`` engines; each takes ``tensor_parallel_size`` GPUs when the cluster has GPUs."""
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    resources = {"num_gpus": tensor_parallel_size} if has_gpus else {"num_cpus": 1}
    # vLLM's per-step INFO lines would drown the run's own progress in the driver's output.
    env = {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    # A replica that dies (OOM, a crashed engine) is restarted by Ray, which reloads the model and
    # retries the requests it held: generation requests are independent, so a retry is safe.
    actor_cls = ray.remote(**resources, max_concurrency=max(1000, 2 * max_in_flight_per_replica),
                           max_restarts=REPLICA_RESTARTS, max_task_retries=REPLICA_RESTARTS,
                           runtime_env={"env_vars": env})(EngineReplica)
    handles = [actor_cls.remote(engine_args) for _ in range(replicas)]
    infos = ray.get([h.info.remote() for h in handles])  # raises here if an engine fails to start
    if infos[0]["on_cpu"]:
        yield_cpu_to_engine()
    log.info("started %d vLLM replica(s) of %s (%s)", replicas, engine_args["model"],
             "GPU" if has_gpus else "CPU")
    return EnginePool(handles, infos[0], max_in_flight_per_replica)
