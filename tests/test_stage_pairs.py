"""pairs: chosen/rejected from judged answers on known scores; and, on the real tiny engine, respond
with n > 1, a judge and pairs through a whole run, read back as TRL's DPO trainer reads them."""

from __future__ import annotations

import asyncio
import json

import pytest

from gen.records import is_dropped
from gen.sampling import Sampling
from gen.stages.base import StageContext
from gen.stages.pairs import Pairs, PairsConfig

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def answer(index: int, text: str, scores: dict, prompt=PROMPT) -> dict:
    return {"id": f"a{index}", "work_key": "s1", "seed_id": "s1", "method": "seed>respond", "round": None,
            "model": "generator", "sampling": "{}", "metadata": {"judge": {"rubric": "alpagasus"}},
            "messages": [*prompt, {"role": "assistant", "content": text}], "scores": scores, "rationale": text}


def paired(answers, config=PairsConfig()) -> list[dict]:
    stage = Pairs(config, StageContext(engine=None, model="generator", sampling=Sampling()))
    return asyncio.run(stage.process_group(answers))


def test_the_best_rated_answer_is_chosen_and_the_lowest_rejected_the_answers_kept_as_evidence():
    answers = [answer(0, "Paris.", {"accuracy": 5}), answer(1, "Lyon.", {"accuracy": 1}),
               answer(2, "Paris, I think.", {"accuracy": 4})]
    out = paired(answers)
    [pair] = [r for r in out if not is_dropped(r)]
    assert pair["chosen"] == answers[0]["messages"] and pair["rejected"] == answers[1]["messages"]
    assert pair["messages"] == pair["chosen"] and pair["scores"] == {"accuracy": 5}
    assert pair["chosen"][:-1] == pair["rejected"][:-1] == PROMPT  # TRL's implicit prompt
    assert pair["stage"] == "pairs" and pair["method"] == "seed>respond>pairs" and pair["model"] == "generator"
    assert pair["metadata"]["pair"] == {"chosen_id": "a0", "rejected_id": "a1", "answers": 3,
                                        "chosen_scores": {"accuracy": 5}, "rejected_scores": {"accuracy": 1}}
    parts = {r["id"]: (r["_drop"]["reason"], r["_drop"]["evidence"]["part"]) for r in out if is_dropped(r)}
    assert parts == {"a0": ("paired", "chosen"), "a1": ("paired", "rejected"), "a2": ("paired", "unused")}
    assert paired(answers) [0]["id"] == pair["id"]  # stable on a rerun


def test_ties_and_small_margins_make_no_pair_and_each_conversation_is_paired_on_its_own():
    tied = [answer(0, "Paris.", {"accuracy": 4}), answer(1, "It is Paris.", {"accuracy": 4})]
    assert {r["_drop"]["reason"] for r in paired(tied)} == {"no_preference"}
    assert all(is_dropped(r) for r in paired([answer(0, "Paris.", {"accuracy": 5})]))
    # Means over aspects: 4.5 against 3.0 is a pair at margin 1, not at margin 2.
    ultra = [answer(0, "Paris.", {"truthfulness": 5, "helpfulness": 4}),
             answer(1, "Lyon.", {"truthfulness": 2, "helpfulness": 4})]
    assert sum(not is_dropped(r) for r in paired(ultra)) == 1
    assert sum(not is_dropped(r) for r in paired(ultra, PairsConfig(min_margin=2))) == 0
    other = [{"role": "user", "content": "What is 2 + 2?"}]
    two_prompts = [*ultra, answer(2, "4", {"truthfulness": 5, "helpfulness": 5}, other),
                   answer(3, "5", {"truthfulness": 1, "helpfulness": 1}, other)]
    pairs = [r for r in paired(two_prompts) if not is_dropped(r)]
    assert sorted(p["chosen"][-1]["content"] for p in pairs) == ["4", "Paris."]


def test_random_rejected_draws_among_the_worse_answers_the_same_on_every_run():
    answers = [answer(i, f"answer {i}", {"accuracy": 5 - i}) for i in range(5)]
    drawn = {paired(answers, PairsConfig(rejected="random"))[0]["rejected"][-1]["content"] for _ in range(3)}
    assert len(drawn) == 1 and drawn <= {"answer 1", "answer 2", "answer 3", "answer 4"}


@pytest.mark.timeout(900)
def test_respond_n_judge_and_pairs_through_a_run_make_dpo_pairs_on_the_real_engine(tmp_path, engine_pool):
    import datasets

    from gen.run import run
    from gen.spec import load_spec
    from tests.runs import make_spec

    make_spec(tmp_path, 6, [], spec="""\
seeds: {paths: [seeds.jsonl]}
model: {name: sdg/tiny-random-chat}
sampling: {temperature: 1.0, max_tokens: 24, seed: 0}
stages:
  - type: respond
    sampling: {n: 4}
  - type: judge
    rationale_max_chars: 100
    sampling: {max_tokens: 400, temperature: 1.0}  # greedy, the tiny model gives every answer one score
  - type: pairs
    min_margin: 1
output: {dir: out}
""")
    out = tmp_path / "out"
    manifest = run(load_spec(tmp_path / "spec.yaml", [f"output.dir={out}"]), engine=engine_pool, progress=False)
    dropped = manifest["totals"]["dropped"]
    pairs_made = manifest["totals"]["kept"]
    # 6 seeds x 4 answers: each answer is paired, unpaired or an unparsed judgement; plus the pairs.
    assert pairs_made > 0 and manifest["totals"]["records"] == 24 + pairs_made, dropped
    assert sum(dropped.get("pairs", {}).values()) + dropped.get("judge", {}).get("unparsed_judgement", 0) == 24
    data = datasets.load_dataset(str(out))["data"] if pairs_made else []
    answers_paired = 0
    for row in data:
        assert row["chosen"][:-1] == row["rejected"][:-1] and row["chosen"][-1]["role"] == "assistant"
        pair = json.loads(row["metadata"])["pair"]
        mean = {part: sum(pair[f"{part}_scores"].values()) / len(pair[f"{part}_scores"]) for part in ("chosen", "rejected")}
        assert mean["chosen"] - mean["rejected"] >= 1
        answers_paired += pair["answers"]
    assert dropped.get("pairs", {}).get("paired", 0) == answers_paired
