"""Language ID with the real lid.176.ftz, and n-gram decontamination against benchmark files."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from filters.decontam import BenchmarkFile, Decontamination, DecontaminationConfig
from filters.langid import LanguageId, LanguageIdConfig, bundled_model_path
from filters.text import normalize


def record(instruction: str, response: str = "") -> dict:
    messages = [{"role": "user", "content": instruction}]
    if response:
        messages.append({"role": "assistant", "content": response})
    return {"id": f"{instruction}|{response}", "messages": messages}


@pytest.fixture(scope="module")
def english_only() -> LanguageId:
    return LanguageId(LanguageIdConfig())


def judge_one(filter_, rec):
    (verdict,) = filter_.judge([rec])
    return verdict


def test_default_model_is_the_bundled_lid_176_ftz(english_only):
    assert english_only.model_path == bundled_model_path()
    assert english_only.model_path.name == "lid.176.ftz" and english_only.model_path.stat().st_size > 900_000


def test_english_kept_and_annotated_even_with_newlines(english_only):
    rec = record("Summarize the following paragraph.\n\nThe meeting moved to Tuesday\nbecause of the storm.",
                 "The meeting was postponed to Tuesday due to a storm.")
    assert judge_one(english_only, rec) is None
    assert rec["lang"] == "en" and rec["lang_score"] >= 0.65


def test_other_language_dropped_with_its_code_and_score(english_only):
    rec = record("Décrivez la tour Eiffel en deux phrases.", "La tour Eiffel est un monument de fer à Paris.")
    verdict = judge_one(english_only, rec)
    assert verdict.reason == "lang_not_allowed"
    assert verdict.evidence["lang"] == "fr" and verdict.evidence["score"] > 0.65


def test_three_letter_language_codes_parse():
    cebuano = record("Ang Sugbo usa ka lalawigan sa Pilipinas nga nahimutang sa rehiyon sa Kabisay-an.")
    assert judge_one(LanguageId(LanguageIdConfig(allowed=["ceb"])), cebuano) is None
    assert cebuano["lang"] == "ceb"
    assert judge_one(LanguageId(LanguageIdConfig()), cebuano).evidence["lang"] == "ceb"


def test_low_score_dropped_and_near_miss_kept():
    gibberish = record("asdf qwer zxcv")  # fastText's top label is en, at about 0.11
    assert judge_one(LanguageId(LanguageIdConfig()), gibberish).reason == "lang_low_score"
    assert judge_one(LanguageId(LanguageIdConfig(min_score=0.1)), gibberish) is None


def test_empty_and_non_utf8_text(english_only):
    assert judge_one(english_only, record("")).reason == "lang_no_text"
    broken = b"Please translate this sentence about the caf\xe9 into simple English words.".decode(
        "utf-8", "surrogateescape")
    assert judge_one(english_only, record(broken)) is None
    assert judge_one(LanguageId(LanguageIdConfig(text="response")), record("Hello there, how are you?")).reason == "lang_no_text"


# ---------------------------------------------------------------- decontamination

QUESTION = ("Natalia sold clips to forty eight of her friends in April and then she sold half as many "
            "clips in May how many clips did she sell altogether")


@pytest.fixture
def benchmarks(tmp_path):
    """The same kind of benchmark in each supported format, with its own prompt column."""
    jsonl = tmp_path / "gsm8k.jsonl"
    jsonl.write_text(json.dumps({"question": QUESTION, "answer": "72"}) + "\n" + json.dumps({"question": None}) + "\n")
    as_json = tmp_path / "trivia.json"
    as_json.write_text(json.dumps([{"q": "Which river flows through the middle of the city of Vienna and on to the Black Sea"}]))
    parquet = tmp_path / "mmlu.parquet"
    pq.write_table(pa.table({"prompt": ["What is the derivative of x squared with respect to x in elementary calculus classes", "Short prompt here"]}), parquet)
    return [BenchmarkFile(path=str(jsonl), column="question"), BenchmarkFile(path=str(as_json), column="q", name="trivia_qa"),
            BenchmarkFile(path=str(parquet), column="prompt")]


def test_decontamination_drops_shared_13_grams_from_each_format(benchmarks):
    f = Decontamination(DecontaminationConfig(benchmarks=benchmarks))
    words = QUESTION.split()
    cases = [
        (record("Solve: " + " ".join(words[:13]) + "?", "Some answer."), "gsm8k", "instruction"),
        (record("Solve: " + " ".join(words[:12]) + "?", "Some answer."), None, None),  # 12 words: near miss
        (record("Tell me about rivers.", "Which river flows through the middle of the town of Vienna and on to the Black Sea?"),
         None, None),  # "city" changed: 8 words in a row at most
        (record("Tell me about rivers.", "Which RIVER flows through the middle of the city of Vienna, and on to the Black Sea?"),
         "trivia_qa", "response"),
        (record("What is the derivative of x squared with respect to x in elementary calculus classes?"), "mmlu", "instruction"),
        (record("Short prompt here."), "mmlu", "instruction"),  # shorter than 13 words: matched whole
        (record("A short prompt here."), None, None),
    ]
    kept, dropped = f([rec for rec, _, _ in cases])
    assert len(kept) + len(dropped) == len(cases)
    by_id = {r["id"]: r["_drop"]["evidence"] for r in dropped}
    for rec, benchmark, field in cases:
        if benchmark is None:
            assert rec["id"] not in by_id
        else:
            evidence = by_id[rec["id"]]
            assert (evidence["benchmark"], evidence["field"]) == (benchmark, field)
            assert evidence["ngram"] in normalize(rec["messages"][1 if field == "response" else 0]["content"])
    assert f.stats()["dropped"] == {"benchmark_overlap": 4}


def test_decontamination_ngram_is_configurable(benchmarks):
    f = Decontamination(DecontaminationConfig(benchmarks=benchmarks, ngram=8))
    (verdict,) = f.judge([record("Tell me: " + " ".join(QUESTION.split()[5:13]))])
    assert verdict.reason == "benchmark_overlap" and len(verdict.evidence["ngram"].split()) == 8
