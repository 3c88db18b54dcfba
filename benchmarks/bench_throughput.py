"""Generation tokens/s of `sdg run` against bare vLLM `LLM.generate`, same prompts, model, sampling.

Both sides exclude model load: the bare side times only `LLM.generate`; the sdg side starts its
replicas first, then times `gen.run.run` as a whole (seed reading, Ray actors, the engine loop,
shard commits and the manifest included). `ignore_eos` makes both generate exactly
`prompts x max_tokens` tokens. The bare side runs in a child process so the two never share CPUs.
Both get the same engine settings, eager on CPU as sdg's replicas default to there. The bare side
runs twice, in vLLM's default processes and with vLLM's in-process switch
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`, the layout of sdg's replicas on CPU), and sdg is compared with
the faster of the two.

    python benchmarks/bench_throughput.py                       # both embedded models, CPU
    python benchmarks/bench_throughput.py --model Qwen/Qwen2.5-7B-Instruct --max-model-len 4096 \
        --prompts 20000 --max-tokens 512 --no-cpu-kv-cache      # unchanged on a GPU machine

Each side is timed `--repeats` times on its loaded model; the medians are compared. Alongside,
the CPU seconds each process used per 1,000 requests (the frontend that holds vLLM's engine
client: `LLM` on the bare side, the Ray actor on sdg's; vLLM's engine core and model worker;
sdg's driver), and with `--profile` one more sdg run sampled by py-spy, its frontend's and
driver's CPU split by component. Prints both figures and the ratio (sdg / bare) per model;
writes benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

RESULTS = Path(__file__).parent / "results"
# Per model: prompts x max_tokens that take ~20-60 s a side on 2 CPU cores.
SIZES = {"sdg/tiny-random-chat": (2000, 128), "sdg/smollm2-135m-instruct": (192, 64)}
# The bare side's process layouts: vLLM's default (`LLM` beside an engine core process with its
# model worker in a third) and everything in the `LLM` process.
BARE_LAYOUTS = {"default processes": {}, "one process": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}}
# py-spy stack samples -> component: the innermost frame that matches a pattern decides.
COMPONENTS = [
    ("chat template", ("apply_chat_template",)),
    ("tokenise", ("tokenization_utils", "tokenizers")),
    ("SamplingParams", ("SamplingParams", "sampling_params.py")),
    ("detokenise", ("detokenizer.py",)),
    ("vLLM output processing", ("output_processor.py",)),
    ("vLLM input processing", ("input_processor.py", "async_llm.py")),
    ("vLLM engine client (zmq, msgspec)", ("core_client.py", "zmq", "msgspec")),
    ("sdg stages", ("gen/stages/",)),
    ("sdg engine pool", ("cluster/engine.py",)),
    ("sdg filters and sink", ("filters/", "gen/sink.py", "pyarrow")),
    ("sdg run loop", ("gen/run.py", "gen/progress.py")),
    ("Ray calls and serialisation", ("ray/", "_raylet", "cloudpickle", "pickle")),
    # The engine's own Python, in the replica's process on CPU (torch's frames count as their caller's).
    ("vLLM model forward", ("model_executor/",)),
    ("vLLM model runner", ("v1/worker/",)),
    ("vLLM sampler", ("v1/sample/",)),
    ("vLLM scheduler", ("v1/core/",)),
    ("vLLM engine core step", ("v1/engine/core.py", "llm_engine.py")),
    ("asyncio", ("asyncio/",)),
]


def instructions(count: int) -> list[str]:
    """Varied instructions of realistic length, from the example seeds, numbered to be distinct."""
    seeds = [json.loads(line)["instruction"] for line in
             (Path(__file__).parents[1] / "examples" / "seeds.jsonl").read_text().splitlines()]
    return [f"{seeds[i % len(seeds)]} (variant {i})" for i in range(count)]


def median_run(timed_runs: list[dict]) -> dict:
    """The run of median tokens/s, with every run's figure beside it."""
    ordered = sorted(timed_runs, key=lambda r: r["tokens_per_s"])
    return {**ordered[len(ordered) // 2], "all_tokens_per_s": [round(r["tokens_per_s"]) for r in timed_runs]}


class CpuMeter:
    """CPU seconds of named processes, and of their children by role, over one timed run."""

    def __init__(self, roots: dict[str, int]):
        self.roots = {pid: name for name, pid in roots.items()}

    def _now(self) -> dict[str, float]:
        roles = dict(self.roots)
        for pid in self.roots:
            for child in psutil.Process(pid).children(recursive=True):
                roles.setdefault(child.pid, _role(child))  # a root's own name wins
        out: dict[str, float] = {}
        for pid, role in roles.items():
            out[role] = out.get(role, 0.0) + _cpu(pid)
        return out

    def __enter__(self):
        self.before = self._now()
        return self

    def __exit__(self, *exc):
        after = self._now()
        self.seconds = {name: round(after[name] - self.before.get(name, 0.0), 2) for name in after}


def _cpu(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except psutil.NoSuchProcess:
        return 0.0


def _role(process: psutil.Process) -> str:
    name = process.name()
    return {"VLLM::EngineCore": "vLLM engine core", "VLLM::Worker": "vLLM model worker"}.get(name, "Ray and others")


def bare_vllm(environment: dict, model_path: str, engine_args: dict, prompts: list[str], sampling: dict,
              commands, out) -> None:
    """The bare side, in its own process: loads, then times one `LLM.generate` per command."""
    os.environ.update(environment)
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_path, **engine_args)
    tokenizer = llm.get_tokenizer()
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    params = SamplingParams(**sampling)
    llm.generate(texts[:8], params, use_tqdm=False)  # warm-up, as sdg's replicas are warm too
    out.put("ready")
    while commands.get() == "run":
        with CpuMeter({"frontend (LLM)": os.getpid()}) as cpu:
            started = time.perf_counter()
            outputs = llm.generate(texts, params, use_tqdm=False)
            seconds = time.perf_counter() - started
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        out.put({"seconds": seconds, "completion_tokens": tokens, "tokens_per_s": tokens / seconds,
                 "cpu_s": cpu.seconds})


class SdgSide:
    """sdg's side: replicas started once, then one whole `gen.run.run` per timed run."""

    def __init__(self, spec_fields: dict, prompts: list[str], workdir: Path):
        import asyncio

        import ray

        from cluster.ray_cluster import connect
        from gen.run import start_engine

        seeds = workdir / "seeds.jsonl"
        seeds.write_text("".join(json.dumps({"instruction": p}) + "\n" for p in prompts))
        self.spec_fields, self.seeds, self.runs = spec_fields, seeds, 0
        self.workdir, self.requests = workdir, len(prompts)
        connect(None)
        self.engine = start_engine(self._next_spec())
        asyncio.run(self.engine.chat([{"role": "user", "content": "warm up"}], {"max_tokens": 8}, key="warm-up"))
        self.replica_pid = ray.get(self.engine.replicas[0].__ray_call__.remote(lambda _: os.getpid()))

    def _next_spec(self):
        """The run's spec with a fresh output dir: a rerun into the same one would resume."""
        from gen.spec import Spec

        self.runs += 1
        return Spec.model_validate({**self.spec_fields, "seeds": {"paths": [str(self.seeds)]},
                                    "stages": [{"type": "respond"}],
                                    "output": {"dir": str(self.workdir / f"out{self.runs}"), "rows_per_shard": 1000}})

    def timed_run(self) -> dict:
        from gen.run import run

        with CpuMeter({"frontend (Ray actor)": self.replica_pid, "sdg driver": os.getpid()}) as cpu:
            started = time.perf_counter()
            # generation only, as bare vLLM
            manifest = run(self._next_spec(), engine=self.engine, progress=False, report=False)
            seconds = time.perf_counter() - started
        tokens = manifest["this_run"]["completion_tokens"]
        return {"seconds": seconds, "completion_tokens": tokens, "tokens_per_s": tokens / seconds,
                "cpu_s": cpu.seconds}

    def profiled_run(self) -> dict:
        from gen.run import run

        return profiled_run(self._next_spec(), self.engine, run, self.replica_pid, self.workdir, self.requests)


def profiled_run(spec, engine, run, replica_pid: int, workdir: Path, requests: int) -> dict:
    """One more run with py-spy sampling the replica and the driver: CPU-s per 1,000 requests by
    component (samples of the thread holding the GIL: Python's CPU time, not threads waiting)."""
    rate = 200
    spies = {name: subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
                                     "--rate", str(rate), "--format", "raw", "--nonblocking", "--gil",
                                     "-o", str(workdir / f"{name}.txt")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for name, pid in (("replica", replica_pid), ("driver", os.getpid()))}
    time.sleep(2)  # py-spy attaches
    run(spec, engine=engine, progress=False, report=False)
    for spy in spies.values():
        spy.send_signal(2)
        spy.wait()
    return {name: components(workdir / f"{name}.txt", rate, requests) for name in spies}


def components(raw: Path, rate: int, requests: int) -> dict[str, float]:
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        counts[_component(stack.split(";"))] += int(samples)
    return {name: round(samples / rate * 1000 / requests, 3) for name, samples in counts.most_common()}


def _component(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, patterns in COMPONENTS:
            if any(pattern in frame for pattern in patterns):
                return name
    return "other"


def measure(model: str, prompts_count: int, max_tokens: int, args) -> dict:
    from gen.embedded_models import EMBEDDED_MODELS, local_path

    model_path = local_path(model)
    # the embedded models are float32 checkpoints for CPUs without bfloat16
    dtype = "float32" if model in EMBEDDED_MODELS and args.dtype == "auto" else args.dtype
    extra = {} if args.no_cpu_kv_cache else {"kv_cache_memory_bytes": int(args.kv_cache_gib * (1 << 30))}
    if not args.compiled and not args.no_cpu_kv_cache:
        extra["enforce_eager"] = True  # what sdg's replicas default to on CPU
    sampling = {"temperature": 0.8, "top_p": 0.95, "max_tokens": max_tokens, "ignore_eos": True}
    prompts = instructions(prompts_count)

    context = multiprocessing.get_context("spawn")
    bare_sides = {}
    for layout, environment in BARE_LAYOUTS.items():
        commands, out = context.Queue(), context.Queue()
        child = context.Process(target=bare_vllm, args=(
            environment, model_path, {"dtype": dtype, "max_model_len": args.max_model_len, "seed": 0, **extra},
            prompts, sampling, commands, out))
        child.start()
        assert out.get() == "ready"
        bare_sides[layout] = (child, commands, out)
    with tempfile.TemporaryDirectory() as workdir:
        sdg = SdgSide({"model": {"name": model, "dtype": dtype, "max_model_len": args.max_model_len,
                                 "engine_args": extra},
                       "sampling": {**sampling, "seed": 0}}, prompts, Path(workdir))
        # The sides take turns, so a change in the machine's load hits all alike.
        bare_runs, sdg_runs = {layout: [] for layout in bare_sides}, []
        for _ in range(args.repeats):
            for layout, (_, commands, out) in bare_sides.items():
                commands.put("run")
                bare_runs[layout].append(out.get())
            sdg_runs.append(sdg.timed_run())
        for child, commands, _ in bare_sides.values():
            commands.put("stop")
            child.join()
        sdg_result = median_run(sdg_runs)
        if args.profile:
            sdg_result["components"] = sdg.profiled_run()
        sdg.engine.shutdown()
    bare = {layout: median_run(runs) for layout, runs in bare_runs.items()}
    fastest = max(bare.values(), key=lambda side: side["tokens_per_s"])
    return {"model": model, "prompts": prompts_count, "max_tokens": max_tokens, "engine_args": extra,
            "bare_vllm": bare, "sdg": sdg_result, "ratio": sdg_result["tokens_per_s"] / fastest["tokens_per_s"]}


def report(result: dict) -> None:
    print(f"\n{result['model']}: {result['prompts']:,} prompts x {result['max_tokens']} tokens")
    sides = [(f"bare LLM, {layout}", side) for layout, side in result["bare_vllm"].items()]
    for name, side in [*sides, ("sdg run", result["sdg"])]:
        print(f"  {name + ':':30}{side['tokens_per_s']:,.0f} tok/s median of {side['all_tokens_per_s']} "
              f"({side['completion_tokens']:,} tokens in {side['seconds']:.1f} s)")
        per_1000 = {k: round(v * 1000 / result["prompts"], 2) for k, v in side["cpu_s"].items()}
        print(f"  {'':30}CPU-s per 1,000 requests: {per_1000}")
    for process, parts in result["sdg"].get("components", {}).items():
        print(f"  sdg {process} by component (py-spy, CPU-s per 1,000 requests): {parts}")
    print(f"  ratio sdg / the faster bare: {result['ratio']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help=f"repeatable; default: {', '.join(SIZES)}")
    parser.add_argument("--prompts", type=int, help="default: per model, " + str(SIZES))
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side; the median is reported")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--kv-cache-gib", type=float, default=1.0,
                        help="KV cache size in GiB (on CPU vLLM otherwise reserves a share of RAM)")
    parser.add_argument("--no-cpu-kv-cache", action="store_true", help="leave the KV cache size to vLLM (GPU)")
    parser.add_argument("--compiled", action="store_true", help="torch.compile on both sides (CPU default: eager)")
    parser.add_argument("--profile", action="store_true", help="one more sdg run under py-spy: CPU by component")
    args = parser.parse_args()

    results = []
    for model in args.model or list(SIZES):
        prompts, max_tokens = SIZES.get(model, (2000, 128))
        results.append(measure(model, args.prompts or prompts, args.max_tokens or max_tokens, args))
        report(results[-1])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "throughput.json").write_text(json.dumps(results, indent=2))
    print("\nratios sdg / the faster bare: " + ", ".join(f"{r['model']} {r['ratio']:.3f}" for r in results))


if __name__ == "__main__":
    main()
