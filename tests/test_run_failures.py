"""How the run meets each kind of failure: a work item whose task raises stops the run (it is
never silently missing), stage code that keeps raising stops it, a slow commit bounds the driver's
memory, a source stage's task commits with all its instances, per-request seeds are derived and
sent, and a cluster that cannot hold the replicas is refused at once."""

from __future__ import annotations

import asyncio
import os
import time

import psutil
import pytest
import ray
from stage_fakes import Committed, ScriptedEngine, completion, context

from cluster.engine import (
    Completion,
    EnginePool,
    EngineShape,
    EngineUnavailable,
    ResourcesUnavailable,
    replica_environment,
    replica_resources,
    request_seed,
    start_replicas,
)
from gen.errors import TooManyStageErrors
from gen.run import _Session, run
from gen.spec import load_spec
from gen.stages.self_instruct import SelfInstruct, SelfInstructConfig
from tests.conftest import REPO, TEST_ENGINE_ARGS
from tests.runs import ids_of, make_spec


class FlakyEngine:
    """The pool's interface, answering at once; ``fail(prompt)`` may raise instead."""

    capacity, max_model_len, user_turn_prefix, chat_template = 16, 1024, None, None
    prompt_tokens = completion_tokens = infrastructure_failures = 0

    def __init__(self, fail):
        self.fail = fail
        self.replicas, self.completion_tokens_by_replica, self.failures_by_replica = [None], [0], [0]
        self.placements = [[]]

    def in_flight(self):
        return [0]

    async def chat(self, messages, sampling, key):
        await asyncio.sleep(0.001)
        self.fail(messages[-1]["content"])
        return [Completion("An answer.", "stop", 5, 3)]


def test_a_work_item_whose_task_raises_stops_the_run_and_is_not_committed(tmp_path, engine_pool):
    """Before: the task was discarded before gather saw it, and the run 'succeeded' without it."""
    spec_path = make_spec(tmp_path, 60)

    def fail(instruction):
        if "number 37 " in instruction:
            raise EngineUnavailable("every replica is gone")

    spec = load_spec(spec_path, [f"output.dir={tmp_path / 'out'}", "filters=[]"])
    with pytest.raises(EngineUnavailable):
        run(spec, engine=FlakyEngine(fail), progress=False, report=False)
    committed = ids_of(tmp_path / "out", "data")
    assert 0 < len(committed) < 60  # what finished before the error is kept
    resumed = run(spec, engine=engine_pool, progress=False, report=False)
    assert resumed["totals"]["records"] == 60 == len(set(ids_of(tmp_path / "out", "data")))
    assert resumed["status"] == "complete"


def test_stage_code_that_keeps_raising_stops_the_run_and_its_rejects_are_not_committed(tmp_path):
    spec_path = make_spec(tmp_path, 200)
    spec = load_spec(spec_path, [f"output.dir={tmp_path / 'out'}", "filters=[]", "output.rows_per_shard=10"])

    def always(instruction):
        raise KeyError("a bug in stage code")

    with pytest.raises(TooManyStageErrors, match="max_stage_error_rate"):
        run(spec, engine=FlakyEngine(always), progress=False, report=False)
    assert ids_of(tmp_path / "out", "rejected") == []  # resumed after the fix, they are made again


def test_a_rare_stage_error_is_one_reject_and_the_run_completes(tmp_path):
    spec = load_spec(make_spec(tmp_path, 100), [f"output.dir={tmp_path / 'out'}", "filters=[]"])

    def once(instruction):
        if "number 5 " in instruction:
            raise KeyError("one odd record")

    manifest = run(spec, engine=FlakyEngine(once), progress=False, report=False)
    assert manifest["totals"]["dropped"] == {"respond": {"stage_error": 1}}
    assert manifest["totals"]["kept"] == 99


def test_a_slow_commit_makes_intake_wait_so_the_buffer_stays_bounded(tmp_path, engine_pool, monkeypatch):
    peaks = []
    original = _Session._filter_and_commit

    def slow_commit(self, batch):
        peaks.append(self._buffered_rows)
        time.sleep(0.5)  # a slow filter chain or store
        return original(self, batch)

    monkeypatch.setattr(_Session, "_filter_and_commit", slow_commit)
    spec = load_spec(make_spec(tmp_path, 400), [f"output.dir={tmp_path / 'out'}", "output.rows_per_shard=20",
                                                "sampling.max_tokens=8"])
    manifest = run(spec, engine=engine_pool, progress=False, report=False)
    assert manifest["totals"]["records"] == 400
    # 2 x rows_per_shard, plus what the work items in flight at that moment brought
    assert max(peaks) <= 2 * 20 + engine_pool.capacity


def test_a_self_instruct_task_and_all_its_instances_are_one_work_item():
    """Before: each instance was its own work item, so a resume could count a task done while
    some of its instances were never committed."""

    def reply(prompt):
        if "Come up with a series of tasks" in prompt:
            return completion("Name three colors of the rainbow quickly.\n10. Describe how a bicycle "
                              "gear system works in detail.\n")
        if "classification" in prompt.lower() and "Can the following task" in prompt:
            return completion("No")
        return completion("Example 1\nInput: x\nOutput: red, orange, yellow\nExample 2\nInput: y\n"
                          "Output: blue, indigo, violet\n")

    stage = SelfInstruct(SelfInstructConfig(target=2), context(ScriptedEngine(reply)))
    seeds = [{"id": f"s{i}", "work_key": f"s{i}", "metadata": {"seed_instruction": f"Seed task number {i} please."}}
             for i in range(8)]

    async def items():
        return [item async for item in stage.generate(seeds, Committed())]

    work_items = asyncio.run(items())
    with_instances = [item for item in work_items if len(item) > 1]
    assert with_instances, work_items
    for item in work_items:
        assert len({record["work_key"] for record in item}) == 1


def recording_replica_class():
    """Defined in a function, so Ray ships the class by value to its worker (this test module
    is not importable there)."""

    from cluster.engine import EngineReplica

    class RecordingReplica(EngineReplica):
        """A replica whose engine records the sampling each request carries, as vLLM would
        receive it; the rest (one actor call per batch of requests, streamed back) is the real one."""

        def __init__(self):
            self.received = []

        def info(self):
            return {"max_model_len": 1024, "user_turn_prefix": "<|im_start|>user\n", "chat_template": None,
                    "on_cpu": False, "startup": {}}

        def ping(self):
            return self.placement()

        async def generate(self, prompt, sampling):
            self.received.append(dict(sampling))
            text = "What is a good name for a cat?" if isinstance(prompt, str) else "Whiskers."
            return [Completion(text, "stop", 4, 6)]

        def seen(self):
            return self.received

    return RecordingReplica


def test_per_request_seeds_are_distinct_and_reproducible_as_sent_to_the_engine(tmp_path, ray_session):
    """On GPU vLLM honours a per-request seed: the same seed on every Magpie request (one shared
    pre-query prompt) would make every instruction the same."""
    spec_text = "model: {name: sdg/tiny-random-chat}\nsampling: {seed: 0}\nstages: [{type: magpie, target: 12}]\n"
    (tmp_path / "magpie.yaml").write_text(spec_text + f"output: {{dir: {tmp_path / 'a'}}}\n")
    sent = []
    for run_number in range(2):
        actor = ray.remote(recording_replica_class()).remote()
        pool = EnginePool([actor], ray.get(actor.info.remote()), max_in_flight_per_replica=4)
        spec = load_spec(tmp_path / "magpie.yaml", [f"output.dir={tmp_path / f'run{run_number}'}"])
        run(spec, engine=pool, progress=False, report=False)
        sent.append(ray.get(actor.seen.remote()))
        ray.kill(actor)
    instruction_seeds = [sorted(s["seed"] for s in received if s["temperature"] == 1.0) for received in sent]
    assert len(set(instruction_seeds[0])) == 12  # every Magpie instruction request has its own seed
    assert instruction_seeds[0] == instruction_seeds[1]  # and the same on a rerun
    assert request_seed(0, "magpie/3/instruction") in instruction_seeds[0]


def test_replicas_that_cannot_fit_are_refused_at_once_naming_the_fields(ray_session, tiny_model_path):
    with pytest.raises(ResourcesUnavailable, match=r"model.replicas \(9\) x model.num_cpus_per_replica \(1\)"):
        start_replicas({"model": str(tiny_model_path)}, replicas=9, tensor_parallel_size=1,
                       max_in_flight_per_replica=4)
    # On a GPU cluster (declared resources), each replica asks for its tensor-parallel GPUs.
    assert replica_resources([{"CPU": 8, "GPU": 4}], {"model": EngineShape(2, 2)}) == {"model": {"num_gpus": 2}}
    with pytest.raises(ResourcesUnavailable, match="needs 6 GPUs, the Ray cluster has 4"):
        replica_resources([{"CPU": 8, "GPU": 4}], {"model": EngineShape(3, 2)})


def test_replicas_without_gpus_share_the_cpus_evenly_unless_told():
    # One replica on one machine computes on all its cores; two split them.
    assert replica_resources([{"CPU": 8}], {"model": EngineShape(1)}) == {"model": {"num_cpus": 8}}
    assert replica_resources([{"CPU": 8}], {"model": EngineShape(2)}) == {"model": {"num_cpus": 4}}
    # Every replica must fit on a node: on nodes of 5 and 1 CPUs, two replicas of 3 would not.
    assert replica_resources([{"CPU": 5}, {"CPU": 1}], {"model": EngineShape(2)}) == {"model": {"num_cpus": 2}}
    # A set number is taken as it is, and refused when the cluster cannot hold it.
    assert replica_resources([{"CPU": 8}], {"model": EngineShape(1, num_cpus_per_replica=1)}) == {
        "model": {"num_cpus": 1}}
    with pytest.raises(ResourcesUnavailable, match=r"model.replicas \(2\) x model.num_cpus_per_replica \(6\) "
                                                   r"needs 12 CPUs, the Ray cluster has 8"):
        replica_resources([{"CPU": 8}], {"model": EngineShape(2, num_cpus_per_replica=6)})


def test_replicas_take_the_cpus_they_hold_as_their_engines_threads(ray_session, tiny_model_path):
    """What Ray reserves for a replica is what its engine computes with: on CPU the engine runs in
    the replica's own process (no engine-core process beside it), on as many torch threads."""
    pool = start_replicas({"model": str(tiny_model_path), **TEST_ENGINE_ARGS}, replicas=1, tensor_parallel_size=1,
                          max_in_flight_per_replica=4, num_cpus_per_replica=2)
    try:
        replica = psutil.Process(ray.get(pool.replicas[0].__ray_call__.remote(lambda _: os.getpid())))
        assert replica.environ()["OMP_NUM_THREADS"] == "2"
        assert ray.get(pool.replicas[0].__ray_call__.remote(lambda _: __import__("torch").get_num_threads())) == 2
        assert not [p for p in replica.children(recursive=True) if "EngineCore" in p.name()]
    finally:
        pool.shutdown()


def test_the_engine_runs_in_the_replica_on_one_cpu_worker_and_in_vllms_processes_otherwise(monkeypatch):
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    one_process = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    assert replica_environment({"num_cpus": 2}, {"model": "m"}).items() >= {**one_process, "OMP_NUM_THREADS": "2"}.items()
    assert replica_environment({"num_cpus": 4}, {"model": "m", "tensor_parallel_size": 2})[
        "VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    on_gpus = replica_environment({"num_gpus": 1}, {"model": "m"})
    assert on_gpus["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1" and "OMP_NUM_THREADS" not in on_gpus
    # The driver's own setting wins, for one run started otherwise.
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    assert replica_environment({"num_cpus": 2}, {"model": "m"})["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"


def test_the_replicas_of_several_engines_each_take_their_own_gpus_or_cpus():
    # A generator (2 replicas x 1 GPU) and a judge (1 replica x 2 GPUs) fill a 4-GPU node...
    assert replica_resources([{"CPU": 16, "GPU": 4}], {"models.0": EngineShape(2, 1), "models.1": EngineShape(1, 2)}) == {
        "models.0": {"num_gpus": 1}, "models.1": {"num_gpus": 2}}
    # ...and one more judge replica does not fit beside them: refused naming every engine's fields.
    with pytest.raises(ResourcesUnavailable, match=r"models\.0\.replicas \(2\) x models\.0\.tensor_parallel_size "
                                                   r"\(1\) \+ models\.1\.replicas \(2\) x .* needs 6 GPUs, the Ray "
                                                   r"cluster has 4"):
        replica_resources([{"CPU": 16, "GPU": 4}], {"models.0": EngineShape(2, 1), "models.1": EngineShape(2, 2)})
    # Without GPUs the replicas of every engine share the CPUs: 3 replicas on 3 CPUs take one each.
    assert replica_resources([{"CPU": 3}], {"models.0": EngineShape(2), "models.1": EngineShape(1)}) == {
        "models.0": {"num_cpus": 1}, "models.1": {"num_cpus": 1}}
    with pytest.raises(ResourcesUnavailable, match="needs 3 CPUs, the Ray cluster has 2"):
        replica_resources([{"CPU": 2}], {"models.0": EngineShape(2), "models.1": EngineShape(1)})
    # An engine that sets its number takes it first; the others share what is left: a judge of 2
    # CPUs on an 8-CPU node leaves 3 each to two generators (not 8 // 3 = 2, and never 8 // 2 = 4).
    assert replica_resources([{"CPU": 8}], {"models.0": EngineShape(2), "models.1": EngineShape(1, num_cpus_per_replica=2)}) == {
        "models.0": {"num_cpus": 3}, "models.1": {"num_cpus": 2}}
    # Per node: a replica of 3 on one of two 4-CPU nodes leaves room for two of 2 on the other.
    assert replica_resources([{"CPU": 4}, {"CPU": 4}], {"models.0": EngineShape(1, num_cpus_per_replica=3),
                                                        "models.1": EngineShape(2)}) == {
        "models.0": {"num_cpus": 3}, "models.1": {"num_cpus": 2}}


def test_each_replica_of_the_gpu_cluster_example_takes_its_gpus_on_one_node():
    """examples/gpu_cluster.yaml: N replicas of tensor_parallel_size k, each one Ray actor asking
    for k GPUs, so its tensor-parallel workers share a node. A cluster whose nodes cannot hold N
    such replicas is refused at once, also when it has enough GPUs in all (Ray would wait forever)."""
    model = load_spec(REPO / "examples" / "gpu_cluster.yaml").model
    engine = {"model": EngineShape(model.replicas, model.tensor_parallel_size, model.num_cpus_per_replica)}
    assert (model.replicas, model.tensor_parallel_size) == (4, 2)
    head, gpu_node = {"CPU": 8}, {"CPU": 32, "GPU": 4}  # a head without GPUs, as KubeRay's
    assert replica_resources([head, gpu_node, gpu_node], engine) == {"model": {"num_gpus": 2}}
    assert replica_resources([head, *[{"CPU": 16, "GPU": 2}] * 4], engine) == {"model": {"num_gpus": 2}}
    # 8 GPUs, but on nodes of 3, 3 and 2 they hold 3 replicas of 2 GPUs; on nodes of 1, none.
    with pytest.raises(ResourcesUnavailable, match=r"model.replicas \(4\) x model.tensor_parallel_size \(2\): "
                                                   r"each replica needs its 2 GPUs on one node, and the Ray "
                                                   r"cluster's nodes \(0, 3, 3, 2 GPUs\) hold 3 such replicas"):
        replica_resources([head, {"GPU": 3}, {"GPU": 3}, {"GPU": 2}], engine)
    with pytest.raises(ResourcesUnavailable, match="hold 0 such replicas"):
        replica_resources([{"CPU": 4, "GPU": 1}] * 8, engine)
    # Without GPUs, a set number of CPUs per replica must fit on a node too: 4 nodes of 2 CPUs
    # hold no replica of 3.
    with pytest.raises(ResourcesUnavailable, match=r"model.num_cpus_per_replica \(3\): .* hold 0 such replicas"):
        replica_resources([{"CPU": 2}] * 4, {"model": EngineShape(2, num_cpus_per_replica=3)})


def test_kept_records_do_not_depend_on_filter_order_and_the_index_holds_only_what_is_kept(ray_session):
    """Before: with [dedup, language_id] dedup remembered the first of a cluster before language_id
    dropped it, so its near-duplicates were dropped too and the whole cluster vanished."""
    from pydantic import TypeAdapter

    from filters import FilterSpec, build_chain

    question = "Explain how photosynthesis turns sunlight, water and carbon dioxide into sugar in plants."
    french = {"id": "fr", "messages": [
        {"role": "user", "content": question},
        {"role": "assistant", "content": "La photosynthèse transforme la lumière du soleil, l'eau et le dioxyde "
                                         "de carbone en sucre et en oxygène dans les feuilles des plantes."}]}
    english = {"id": "en", "messages": [
        {"role": "user", "content": question + " Please."},
        {"role": "assistant", "content": "Plants capture sunlight with chlorophyll and use its energy to turn "
                                         "water and carbon dioxide into glucose, releasing oxygen."}]}
    later = {"id": "later", "messages": [
        {"role": "user", "content": question + " Thanks."},
        {"role": "assistant", "content": "Chlorophyll absorbs light; the plant splits water and fixes carbon "
                                         "dioxide into sugar, giving off oxygen as a by-product."}]}
    outcomes = []
    for order in (["dedup", "language_id"], ["language_id", "dedup"]):
        chain = build_chain(TypeAdapter(list[FilterSpec]).validate_python([{"type": t} for t in order]))
        try:
            kept, rejected = chain([dict(french), dict(english)])
            kept_later, _ = chain([dict(later)])  # a later batch: judged against the index
        finally:
            chain.close()
        outcomes.append(([r["id"] for r in kept], {r["id"]: r["_drop"]["reason"] for r in rejected},
                         [r["id"] for r in kept_later]))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0] == (["en"], {"fr": "lang_not_allowed"}, [])  # "later" duplicates the kept "en"
