"""The default rule chain of examples/filter.yaml on labelled answers: good ones kept, degenerate
ones dropped by the rule made for them (benchmarks/bench_rules.py reports the same figures with
the Self-Instruct seed tasks added)."""

from __future__ import annotations

import pytest
import yaml
from pydantic import TypeAdapter

from filters import FilterSpec, build_chain
from tests.conftest import REPO
from tests.labelled_answers import GOOD_ANSWERS, degenerate, read_good

REPEATS = {("gopher_repetition", "gopher_dup_5gram"), ("gopher_repetition", "gopher_dup_line_frac"),
           ("gopher_repetition", "gopher_dup_line_char_frac")}
# A loop of an answer's first line can be all punctuation ("```json") or end in ":" ("Food:"):
# the response rules, earlier in the chain, take those first.
LOOP = REPEATS | {("response_rules", "response_only_punctuation"), ("response_rules", "response_ends_with_colon")}
# What each kind of degenerate answer must be dropped by, and the share of it that must be.
EXPECTED = {
    "truncated": ({("response_rules", "response_truncated")}, 1.0),
    "empty": ({("response_rules", "response_empty")}, 1.0),
    "whitespace": ({("response_rules", "response_empty")}, 1.0),
    "punctuation": ({("response_rules", "response_only_punctuation")}, 1.0),
    "echo": ({("response_rules", "response_same_as_input")}, 1.0),
    "refusal": ({("refusal", "refusal")}, 1.0),
    "loop_sentence": (LOOP, 1.0),
    "loop_phrase": (LOOP, 1.0),
    "loop_numbered": (LOOP, 1.0),
    # The answer, then its last line 12 more times: a long answer with a short last line stays
    # under the shares (the loop a model does not escape runs to the length limit instead).
    "loop_tail": (LOOP, 0.95),
}
GOOD_DROPPED_MAX = 0.05  # the README's target


@pytest.fixture(scope="module")
def chain():
    specs = yaml.safe_load((REPO / "examples" / "filter.yaml").read_text())["filters"]
    quality = [spec for spec in specs if spec["type"] not in ("language_id", "dedup")]
    assert [spec["type"] for spec in quality] == ["instruction_rules", "response_rules", "refusal",
                                                   "gopher_repetition", "gopher_quality"]
    return build_chain(TypeAdapter(list[FilterSpec]).validate_python(quality))


def drops(chain, records):
    _, dropped = chain([dict(r) for r in records])
    by_id = {r["id"]: (r["_drop"]["filter"], r["_drop"]["reason"]) for r in dropped}
    return [by_id.get(r["id"]) for r in records]


def test_the_fixture_has_the_shapes_it_promises():
    good = read_good(GOOD_ANSWERS)
    assert len(good) >= 40
    names = {r["seed_id"] for r in good}
    for shape in ("code_python_reverse", "math_latex_integral", "table_markdown_planets", "list_numbered_steps",
                  "label_one_word_capital", "urls_resources", "long_instruction_with_input", "chess_draw"):
        assert shape in names


def test_good_answers_are_kept(chain):
    good = read_good(GOOD_ANSWERS)
    dropped = {r["seed_id"]: d for r, d in zip(good, drops(chain, good), strict=True) if d}
    # Known: five German compounds of 24-39 letters are over Gopher's mean word length of 10.
    assert set(dropped) <= {"long_words_german"}, dropped
    assert len(dropped) / len(good) <= GOOD_DROPPED_MAX


@pytest.mark.parametrize("kind", EXPECTED)
def test_degenerate_answers_are_dropped_by_their_rule(chain, kind):
    bad = [record for k, record in degenerate(read_good(GOOD_ANSWERS)) if k == kind]
    reasons = drops(chain, bad)
    expected, share = EXPECTED[kind]
    assert all(reason is None or reason in expected for reason in reasons), set(reasons) - expected
    assert sum(reason is not None for reason in reasons) >= share * len(bad)


def test_repetition_alone_drops_the_loops_and_no_good_answer():
    repetition = build_chain(TypeAdapter(list[FilterSpec]).validate_python([{"type": "gopher_repetition"}]))
    good = read_good(GOOD_ANSWERS)
    loops = [record for kind, record in degenerate(good) if kind.startswith("loop")]
    assert not any(drops(repetition, good))
    assert sum(d is not None for d in drops(repetition, loops)) >= 0.95 * len(loops)
