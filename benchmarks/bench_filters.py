"""Filter throughput: records/s per core for each filter and for the whole chain.

Records of realistic length: an instruction of one real P3 prompt (plus a slice of another, so
that not every record is an exact duplicate) and a ~150-word response of real P3 text; random words
when ``../shared/data`` is absent. 100k records by default (``--records N``), judged in batches of
1,000 as the run does at commit time. Per core = records / CPU seconds of the driver process (the
filters run in the driver; the dedup index actors use the other core). Also measures MinHash
signatures alone on ~200-word texts against datasketch's SHA-1 ``bulk`` path in the same run.

``--baseline REV`` (repeatable) also loads the ``filters`` package as it was at git revision REV,
times it on the same records beside the current one (the machine is shared, so only same-run ratios
mean much), and asserts that every filter makes the same keep/drop decision with the same reason on
the first ``--check`` records, except a filter in ``CHANGED`` whose change REV predates: for those it
reports the share that agree.

Writes ``benchmarks/results/filters.json``. Not a test.
Run: ``.venv/bin/python benchmarks/bench_filters.py [--records N] [--baseline REV ...]``
"""

from __future__ import annotations

import argparse
import io
import json
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


from filters.dedup import DedupConfig, compute_signatures  # noqa: E402
from filters.text import normalize  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"
BATCH = 1000
# Filters whose decisions were changed on purpose: the revision of the change, and what changed.
# Against a baseline older than the change their agreement is reported, not asserted.
CHANGED = {"dedup": ("2be90b4", "decides by exact Jaccard"),
           "language_id": ("979ef73", "max_chars 300 shared by instruction and response"),
           **{name: ("77d17fe", "defaults for instruction answers (benchmarks/bench_rules.py)") for name in
              ("instruction_rules", "response_rules", "gopher_repetition", "gopher_quality")}}


def changed_since(filter_type: str, baseline: str) -> bool:
    """Whether ``filter_type``'s decisions were changed on purpose after revision ``baseline``."""
    if filter_type not in CHANGED:
        return False
    is_ancestor = subprocess.run(["git", "-C", str(REPO), "merge-base", "--is-ancestor", CHANGED[filter_type][0], baseline])
    return is_ancestor.returncode != 0


def source_texts() -> list[str]:
    paths = sorted((SHARED / "p3_sample").glob("*.jsonl"))
    if paths:
        return [json.loads(line)["prompt"] for path in paths for line in path.open()]
    rng = random.Random(0)
    vocabulary = [f"word{i}" for i in range(20000)]
    return [" ".join(rng.choices(vocabulary, k=rng.randint(20, 80))) for _ in range(5000)]


def make_records(count: int, texts: list[str]) -> list[dict]:
    rng = random.Random(1)
    words = " ".join(texts).split()
    records = []
    for i in range(count):
        start = rng.randrange(len(words) - 200)
        instruction = f"{rng.choice(texts)} {' '.join(words[start : start + 12])}"
        response = " ".join(words[start + 12 : start + 12 + rng.randint(120, 180)])
        records.append({"id": f"r{i}", "finish_reason": "stop", "metadata": {},
                        "messages": [{"role": "user", "content": instruction},
                                     {"role": "assistant", "content": response}]})
    return records


def benchmark_file(directory: Path, texts: list[str]) -> str:
    """A benchmark to decontaminate against: the Self-Instruct seeds when present, else 500 texts."""
    seeds = SHARED / "self_instruct_seed_tasks.jsonl"
    if seeds.exists():
        return json.dumps({"path": str(seeds), "column": "instruction"})
    path = directory / "bench.jsonl"
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts[:500]))
    return json.dumps({"path": str(path), "column": "prompt"})


def timed(chains: dict, records: list[dict]) -> dict:
    """Each chain of ``chains`` (by version) over ``records``, batch by batch in turn, so that every
    version sees the same load of the shared machine at nearly the same time."""
    cpu, wall, kept = dict.fromkeys(chains, 0.0), dict.fromkeys(chains, 0.0), dict.fromkeys(chains, 0)
    for start in range(0, len(records), BATCH):
        for name, chain in chains.items():
            batch = [dict(r) for r in records[start : start + BATCH]]
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            k, _ = chain(batch)
            wall[name] += time.perf_counter() - wall_start
            cpu[name] += time.process_time() - cpu_start
            kept[name] += len(k)
    return {name: {"records": len(records), "kept": kept[name], "wall_s": round(wall[name], 2),
                   "cpu_s": round(cpu[name], 2), "records_per_s_wall": round(len(records) / wall[name]),
                   "records_per_core_s": round(len(records) / cpu[name])} for name in chains}


def speeds(row: dict) -> str:
    """Records per CPU-second of each version, and the current one's ratio to each baseline."""
    current = row["current"]["records_per_core_s"]
    return ", ".join(f"{name} {timing['records_per_core_s']}" + ("" if name == "current" else
                     f" (x{current / timing['records_per_core_s']:.2f})") for name, timing in row.items())


def signature_speed(texts: list[str]) -> dict:
    from datasketch import MinHash

    rng = random.Random(2)
    words = " ".join(texts).split()
    docs = [" ".join(words[s : s + 200]) for s in (rng.randrange(len(words) - 200) for _ in range(20000))]
    config = DedupConfig()
    cpu = time.process_time()
    for start in range(0, len(docs), BATCH):
        compute_signatures(config, docs[start : start + BATCH])
    ours = len(docs) / (time.process_time() - cpu)
    sample = docs[:3000]
    cpu = time.process_time()
    shingles = []
    for doc in sample:
        w = normalize(doc).split()
        shingles.append([" ".join(w[i : i + 5]).encode() for i in range(len(w) - 4)])
    MinHash.bulk(shingles, num_perm=config.num_perm)
    sha1 = len(sample) / (time.process_time() - cpu)
    return {"words_per_doc": 200, "docs_per_core_s": round(ours), "datasketch_sha1_bulk_docs_per_core_s": round(sha1)}


def load_filters(root: Path | None) -> SimpleNamespace:
    """The ``filters`` package from ``root`` (None: this checkout).

    Both versions are named ``filters``, so each is imported with the other's modules moved out of
    ``sys.modules``; objects keep their own module's globals, so they coexist afterwards.
    """
    import ray

    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] == "filters"}
    sys.path.insert(0, str(root or REPO))
    try:
        import filters
        import filters.decontam
        import filters.dedup
        import filters.langid
        import filters.quality

        package = SimpleNamespace(build_chain=filters.build_chain, FilterSpec=filters.FilterSpec, decontam=filters.decontam,
                                  dedup=filters.dedup, langid=filters.langid, quality=filters.quality)
        # Ray would ship the index actor's class by module name, and workers would import this
        # checkout's; by value, each version's actors run their own code.
        ray.cloudpickle.register_pickle_by_value(filters.dedup)
    finally:
        sys.path.remove(str(root or REPO))
        for name in [name for name in sys.modules if name.split(".")[0] == "filters"]:
            del sys.modules[name]
        sys.modules.update(saved)
    return package


def checkout(revision: str, directory: Path) -> Path:
    """``filters/`` as it was at ``revision``, extracted under ``directory``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "filters"], check=True, capture_output=True)
    tarfile.open(fileobj=io.BytesIO(archive.stdout)).extractall(directory, filter="data")
    return directory


def configs_of(package: SimpleNamespace, benchmark: dict) -> list:
    q = package.quality
    return [q.ResponseRulesConfig(), q.InstructionRulesConfig(), q.RefusalConfig(), q.GopherRepetitionConfig(),
            q.GopherQualityConfig(), package.langid.LanguageIdConfig(), package.dedup.DedupConfig(),
            package.decontam.DecontaminationConfig.model_validate({"benchmarks": [benchmark]})]


def decisions(package: SimpleNamespace, config, records: list[dict]) -> list[str | None]:
    """Each record's drop reason (None: kept) from ``config``'s filter alone."""
    chain = package.build_chain([config])
    reasons = []
    for start in range(0, len(records), BATCH):
        kept, dropped = chain([dict(r) for r in records[start : start + BATCH]])
        by_id = {r["id"]: r["_drop"]["reason"] for r in dropped}
        reasons += [by_id.get(r["id"]) for r in records[start : start + BATCH]]
    chain.close()
    return reasons


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--baseline", action="append", default=[], help="git revision to time and check decisions against (repeatable)")
    parser.add_argument("--check", type=int, default=20_000, help="records whose decisions must match the baseline")
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    texts = source_texts()
    records = make_records(args.records, texts)
    results: dict = {"records": args.records, "batch": BATCH,
                     "text_source": "p3_sample" if (SHARED / "p3_sample").exists() else "random"}
    results["minhash_signatures"] = signature_speed(texts)
    print("signatures:", results["minhash_signatures"])
    with tempfile.TemporaryDirectory() as tmp:
        benchmark = json.loads(benchmark_file(Path(tmp), texts))
        versions = {"current": load_filters(None)}
        for baseline in args.baseline:
            versions[baseline] = load_filters(checkout(baseline, Path(tmp) / baseline))
        results["baselines"] = args.baseline
        configs = {name: configs_of(package, benchmark) for name, package in versions.items()}
        sample = records[: args.check]
        results["decisions_vs_baseline"] = {"records": len(sample), "changed": CHANGED}
        for baseline in args.baseline:
            agreement = {}
            for current, before in zip(configs["current"], configs[baseline], strict=True):
                now, then = decisions(versions["current"], current, sample), decisions(versions[baseline], before, sample)
                agreement[current.type] = sum(a == b for a, b in zip(now, then, strict=True)) / len(sample)
                assert changed_since(current.type, baseline) or agreement[current.type] == 1, (
                    f"{current.type}: decisions differ from {baseline}")
            results["decisions_vs_baseline"][baseline] = agreement
            print(f"decisions vs {baseline} on {len(sample)} records: {agreement}")
        results["per_filter"] = {}
        for position, config in enumerate(configs["current"]):
            chains = {name: package.build_chain([configs[name][position]]) for name, package in versions.items()}
            results["per_filter"][config.type] = timed(chains, records)
            for chain in chains.values():
                chain.close()
            print(config.type, speeds(results["per_filter"][config.type]))
        chains = {name: package.build_chain(configs[name]) for name, package in versions.items()}
        results["chain"] = timed(chains, records)
        for name, chain in chains.items():
            results["chain"][name]["stats"] = chain.stats()
            chain.close()
        print("chain", speeds(results["chain"]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "filters.json").write_text(json.dumps(results, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
