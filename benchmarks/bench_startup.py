"""vLLM start-up on the CPU backend: compiled (cold and warm compile cache) against eager.

On CPU, vLLM compiles the model with torch.compile (Dynamo, then Inductor's C++ kernels) unless
``enforce_eager`` is set; the compiled kernels are cached (``VLLM_CACHE_ROOT``,
``TORCHINDUCTOR_CACHE_DIR``), so a second start can skip most of the work. Each setting starts a
fresh process, times ``LLM(...)`` (load, compile or cache load, warm-up) and then the generation
of the same prompts, so the start-up saved can be weighed against decoding speed lost:

    python benchmarks/bench_startup.py                               # SmolLM2, the quickstart's shape
    python benchmarks/bench_startup.py --model sdg/tiny-random-chat

The cold run gets empty cache dirs of its own; the warm run reuses them. Prints each setting's
start-up seconds and tokens/s and the ratios against the cold compiled start; writes
benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

from bench_throughput import instructions

RESULTS = Path(__file__).parent / "results"


def start_and_generate(model_path: str, engine_args: dict, env: dict, prompts: list[str],
                       max_tokens: int, out) -> None:
    os.environ.update(env)  # before vLLM and torch are imported: they read the cache dirs once
    from vllm import LLM, SamplingParams

    started = time.perf_counter()
    llm = LLM(model=model_path, **engine_args)
    start_s = time.perf_counter() - started
    params = SamplingParams(temperature=0.7, top_p=0.95, max_tokens=max_tokens, ignore_eos=True)
    started = time.perf_counter()
    outputs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params, use_tqdm=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    out.put({"start_s": round(start_s, 1), "tokens_per_s": round(tokens / seconds, 1)})


def measure(model_path: str, engine_args: dict, env: dict, prompts: list[str], max_tokens: int) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    started = time.perf_counter()
    child = context.Process(target=start_and_generate,
                            args=(model_path, engine_args, env, prompts, max_tokens, queue))
    child.start()
    result = queue.get()
    child.join()
    return {**result, "process_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sdg/smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    from gen.embedded_models import local_path

    model_path = local_path(args.model)
    engine_args = {"dtype": "float32", "max_model_len": 2048, "kv_cache_memory_bytes": 1 << 30, "seed": 0}
    prompts = instructions(args.prompts)
    with tempfile.TemporaryDirectory() as caches:
        env = {"VLLM_CACHE_ROOT": f"{caches}/vllm", "TORCHINDUCTOR_CACHE_DIR": f"{caches}/inductor"}
        settings = {
            "compiled_cold": (engine_args, env),
            "compiled_warm": (engine_args, env),
            "eager": ({**engine_args, "enforce_eager": True}, env),
        }
        results = {}
        for name, (setting_args, setting_env) in settings.items():
            results[name] = measure(model_path, setting_args, setting_env, prompts, args.max_tokens)
            print(name, results[name], flush=True)
    cold = results["compiled_cold"]
    for name, result in results.items():
        print(f"{name:14s} start {result['start_s']:6.1f} s ({result['start_s'] / cold['start_s']:.2f}x cold), "
              f"process {result['process_s']:6.1f} s, {result['tokens_per_s']:6.1f} tok/s "
              f"({result['tokens_per_s'] / cold['tokens_per_s']:.2f}x cold)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.json").write_text(json.dumps(
        {"model": args.model, "prompts": args.prompts, "max_tokens": args.max_tokens, "results": results},
        indent=2) + "\n")


if __name__ == "__main__":
    main()
