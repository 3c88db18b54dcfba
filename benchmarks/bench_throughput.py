"""Generation tokens/s of `sdg run` against bare vLLM `LLM.generate`, same prompts, model, sampling.

Both sides exclude model load: the bare side times only `LLM.generate`; the sdg side starts its
replicas first, then times `gen.run.run` as a whole (seed reading, Ray actors, the async engine,
shard commits and the manifest included). `ignore_eos` makes both generate exactly
`prompts x max_tokens` tokens. The bare side runs in a child process so the two never share CPUs.

    python benchmarks/bench_throughput.py                       # tiny offline model, CPU
    python benchmarks/bench_throughput.py --model Qwen/Qwen2.5-7B-Instruct --max-model-len 4096 \
        --prompts 20000 --max-tokens 512 --no-cpu-kv-cache      # unchanged on a GPU machine

Each side is timed `--repeats` times on its loaded model; the medians are compared. Prints both
figures and the ratio (sdg / bare); writes benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def instructions(count: int) -> list[str]:
    """Varied instructions of realistic length, from the example seeds, numbered to be distinct."""
    seeds = [json.loads(line)["instruction"] for line in
             (Path(__file__).parents[1] / "examples" / "seeds.jsonl").read_text().splitlines()]
    return [f"{seeds[i % len(seeds)]} (variant {i})" for i in range(count)]


def median_run(timed_runs: list[dict]) -> dict:
    """The run of median tokens/s, with every run's figure beside it."""
    ordered = sorted(timed_runs, key=lambda r: r["tokens_per_s"])
    return {**ordered[len(ordered) // 2], "all_tokens_per_s": [round(r["tokens_per_s"]) for r in timed_runs]}


def bare_vllm(model_path: str, engine_args: dict, prompts: list[str], sampling: dict, repeats: int,
              out) -> None:
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_path, **engine_args)
    tokenizer = llm.get_tokenizer()
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    params = SamplingParams(**sampling)
    llm.generate(texts[:8], params, use_tqdm=False)  # warm-up, as sdg's replicas are warm too
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        outputs = llm.generate(texts, params, use_tqdm=False)
        seconds = time.perf_counter() - started
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        runs.append({"seconds": seconds, "completion_tokens": tokens, "tokens_per_s": tokens / seconds})
    out.put(median_run(runs))


def sdg_run(model: str, spec_fields: dict, prompts: list[str], repeats: int, workdir: Path) -> dict:
    import asyncio

    from cluster.ray_cluster import connect
    from gen.run import run, start_engine
    from gen.spec import Spec

    seeds = workdir / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": p}) + "\n" for p in prompts))
    specs = [Spec.model_validate({**spec_fields, "seeds": {"paths": [str(seeds)]},
                                  "stages": [{"type": "respond"}],
                                  "output": {"dir": str(workdir / f"out{i}"), "rows_per_shard": 1000}})
             for i in range(repeats)]
    connect(None)
    engine = start_engine(specs[0])
    asyncio.run(engine.chat([{"role": "user", "content": "warm up"}], {"max_tokens": 8}, key="warm-up"))
    runs = []
    for spec in specs:  # a fresh output dir each time: a rerun into the same one would resume
        started = time.perf_counter()
        manifest = run(spec, engine=engine, progress=False, report=False)  # generation only, as bare vLLM
        seconds = time.perf_counter() - started
        tokens = manifest["this_run"]["completion_tokens"]
        runs.append({"seconds": seconds, "completion_tokens": tokens, "tokens_per_s": tokens / seconds})
    engine.shutdown()
    return median_run(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sdg/tiny-random-chat")
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side; the median is reported")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--kv-cache-gib", type=float, default=1.0,
                        help="KV cache size in GiB (on CPU vLLM otherwise reserves a share of RAM)")
    parser.add_argument("--no-cpu-kv-cache", action="store_true", help="leave the KV cache size to vLLM (GPU)")
    args = parser.parse_args()

    from gen.embedded_models import EMBEDDED_MODELS, local_path

    model_path = local_path(args.model)
    # the embedded models are float32 checkpoints for CPUs without bfloat16
    dtype = "float32" if args.model in EMBEDDED_MODELS and args.dtype == "auto" else args.dtype
    extra = {} if args.no_cpu_kv_cache else {"kv_cache_memory_bytes": int(args.kv_cache_gib * (1 << 30))}
    sampling = {"temperature": 0.8, "top_p": 0.95, "max_tokens": args.max_tokens, "ignore_eos": True}
    prompts = instructions(args.prompts)

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=bare_vllm, args=(
        model_path, {"dtype": dtype, "max_model_len": args.max_model_len, "seed": 0, **extra},
        prompts, sampling, args.repeats, queue))
    child.start()
    bare = queue.get()
    child.join()

    with tempfile.TemporaryDirectory() as workdir:
        sdg = sdg_run(args.model, {
            "model": {"name": args.model, "dtype": dtype, "max_model_len": args.max_model_len,
                      "engine_args": extra},
            "sampling": {**sampling, "seed": 0}}, prompts, args.repeats, Path(workdir))

    result = {"model": args.model, "prompts": args.prompts, "max_tokens": args.max_tokens,
              "bare_vllm": bare, "sdg": sdg, "ratio": sdg["tokens_per_s"] / bare["tokens_per_s"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "throughput.json").write_text(json.dumps(result, indent=2))
    for name, side in (("bare vLLM LLM.generate", bare), ("sdg run", sdg)):
        print(f"{name + ':':24}{side['tokens_per_s']:,.0f} tok/s median of {side['all_tokens_per_s']} "
              f"({side['completion_tokens']:,} tokens in {side['seconds']:.1f} s)")
    print(f"ratio sdg / bare:       {result['ratio']:.3f}")


if __name__ == "__main__":
    main()
