"""Every quality reason code drops a record that breaks its rule and keeps a near miss."""

from __future__ import annotations

import random
import re
import string
from collections import Counter

import pytest

from filters.quality import (
    GopherQuality,
    GopherQualityConfig,
    GopherRepetition,
    GopherRepetitionConfig,
    InstructionRules,
    InstructionRulesConfig,
    Refusal,
    RefusalConfig,
    ResponseRules,
    ResponseRulesConfig,
)
from filters.text import normalize, prose, without_list_markers


def record(instruction: str, response: str = "", **columns) -> dict:
    messages = [{"role": "user", "content": instruction}]
    if response:
        messages.append({"role": "assistant", "content": response})
    return {"id": "r", "messages": messages, **columns}


def verdict_of(filter_, rec):
    (verdict,) = filter_.judge([rec])
    return verdict.reason if verdict else None


GOOD_RESPONSE = "Drink water, sleep eight hours, and walk every day for at least half an hour."

INSTRUCTION_CASES = [
    # (reason, dropped instruction, near miss that is kept)
    ("instruction_too_short", "Name three colors", "Name three primary colors"),
    ("instruction_too_long", " ".join(["word"] * 151), " ".join(["word"] * 150)),
    ("instruction_blacklisted_word", "Describe the image of a sunset.", "Describe the imagery of a sunset."),
    ("instruction_blacklisted_word", "Tell me how to go to the station.", "Tell me how to get to the station."),
    ("instruction_banned_prefix", "Write a program that sorts a list.", "Write a poem that sorts a list."),
    ("instruction_starts_with_punctuation", '"Summarize this text for a child."', "Summarize this text for a child."),
    ("instruction_starts_non_ascii", "¿Cuál es la capital de Francia?", "Cuál es la capital de Francia?"),
]


@pytest.mark.parametrize(("reason", "dropped", "kept"), INSTRUCTION_CASES)
def test_instruction_rules(reason, dropped, kept):
    rules = InstructionRules(InstructionRulesConfig())
    generated = {"method": "self_instruct>respond"}
    assert verdict_of(rules, record(dropped, GOOD_RESPONSE, **generated)) == reason
    assert verdict_of(rules, record(kept, GOOD_RESPONSE, **generated)) is None
    # A user's instruction is not judged by rules made for generated ones, unless asked.
    assert verdict_of(rules, record(dropped, GOOD_RESPONSE, method="seed")) is None
    assert verdict_of(InstructionRules(InstructionRulesConfig(applies_to="all")), record(dropped, GOOD_RESPONSE)) == reason


@pytest.mark.parametrize("method", ["self_instruct", "magpie>respond", "seed>evol_instruct>respond"])
def test_instruction_rules_judge_what_a_stage_wrote(method):
    rules = InstructionRules(InstructionRulesConfig())
    assert verdict_of(rules, record("Draw a map of your town.", GOOD_RESPONSE, method=method)) == "instruction_blacklisted_word"
    assert verdict_of(rules, record("Draw a map of your town.", GOOD_RESPONSE, method="seed>respond")) is None


def test_instruction_length_does_not_count_the_input():
    rules = InstructionRules(InstructionRulesConfig())
    notes = " ".join(["word"] * 300)
    for key in ("instance_input", "seed_input"):
        with_input = record(f"Summarize the following notes in two sentences.\n\n{notes}", GOOD_RESPONSE,
                            method="self_instruct", metadata={key: notes})
        assert verdict_of(rules, with_input) is None
    long_instruction = record(" ".join(["word"] * 151), GOOD_RESPONSE, method="self_instruct", metadata={"seed_input": "x y"})
    assert verdict_of(rules, long_instruction) == "instruction_too_long"


RESPONSE_CASES = [
    ("response_truncated", record("Tell me a story.", "Once upon a", finish_reason="length"),
     record("Tell me a story.", "Once upon a time.", finish_reason="stop")),
    ("response_empty", record("Tell me a story.", "  \n "), record("Tell me a story.", "No.")),
    ("response_same_as_input", record("Repeat after me: hello", "Repeat after me: hello"),
     record("Repeat after me: hello", "hello")),
    ("response_same_as_input",
     record("Fix the grammar.\n\nHe go home.", "He go home.", metadata={"seed_input": "He go home."}),
     record("Fix the grammar.\n\nHe go home.", "He goes home.", metadata={"seed_input": "He go home."})),
    ("response_same_as_input",  # the whole prompt echoed, input included
     record("Fix the grammar.\n\nHe go home.", "Fix the grammar.\n\nHe go home.", metadata={"seed_input": "He go home."}),
     record("Fix the grammar.\n\nHe go home.", "He goes home.", metadata={"seed_input": "He go home."})),
    ("response_same_as_input",  # the instruction without its input echoed
     record("Fix the grammar.\n\nHe go home.", "Fix the grammar.", metadata={"seed_input": "He go home."}),
     record("Fix the grammar.\n\nHe go home.", "Fix: He goes home.", metadata={"seed_input": "He go home."})),
    ("response_only_punctuation", record("Tell me a story.", "..."), record("Tell me a story.", "...and then?")),
    ("response_only_punctuation", record("Write some code.", "```\n```"),
     record("Draw a house in ASCII.", "```\n  /\\\n /  \\\n |__|\n```")),
    ("response_ends_with_colon", record("List three fruits.", "Here are three fruits:"),
     record("List three fruits.", "Here are three fruits: apple, pear, plum.")),
]


@pytest.mark.parametrize(("reason", "dropped", "kept"), RESPONSE_CASES)
def test_response_rules(reason, dropped, kept):
    rules = ResponseRules(ResponseRulesConfig())
    assert verdict_of(rules, dropped) == reason
    assert verdict_of(rules, kept) is None


def test_refusal_and_disclaimer():
    refusal = Refusal(RefusalConfig())
    ask = "Write a limerick about a cat."
    assert verdict_of(refusal, record(ask, "As an AI language model, I cannot have opinions on cats.")) == "ai_disclaimer"
    assert verdict_of(refusal, record(ask, "I’m sorry, but I can’t help with that.")) == "refusal"
    # Near misses: an answer that mentions language models, and a long one that apologises in passing.
    assert verdict_of(refusal, record(ask, "An AI language model is a program that predicts words.")) is None
    story = "The old cat said: I'm sorry, I ate the fish. " + " ".join(f"Then it slept for hour {i}." for i in range(20))
    assert len(story.split()) >= 80
    assert verdict_of(refusal, record(ask, story)) is None


# ---------------------------------------------------------------- Gopher repetition

OFF = {"dup_line_frac": 1.0, "dup_para_frac": 1.0, "dup_line_char_frac": 1.0, "dup_para_char_frac": 1.0,
       "top_ngram_char_frac": {}, "dup_ngram_char_frac": {}, "ngram_min_words": 0}


def repetition(**rule) -> GopherRepetition:
    """A repetition filter with only ``rule`` switched on, so each rule is tested alone."""
    return GopherRepetition(GopherRepetitionConfig(**{**OFF, **rule}))


@pytest.mark.parametrize("separator", ["\n\n", "\n"])
def test_duplicate_paragraph_and_line_fractions(separator):
    kind = "para" if separator == "\n\n" else "line"
    by_count = repetition(**{f"dup_{kind}_frac": 0.30})
    # 1 repeat in 3 blocks is 0.33 > 0.30; 1 in 4 is 0.25.
    assert verdict_of(by_count, record("q", separator.join(["same", "same", "other"]))) == f"gopher_dup_{kind}_frac"
    assert verdict_of(by_count, record("q", separator.join(["same", "same", "other", "more"]))) is None
    by_chars = repetition(**{f"dup_{kind}_char_frac": 0.20})
    # 30 repeated characters of 30+30+60 plus separators is 0.24 (> 0.20); with 100 they are 0.18.
    dropped = separator.join(["x" * 30, "x" * 30, "y" * 60])
    kept = separator.join(["x" * 30, "x" * 30, "y" * 100])
    assert verdict_of(by_chars, record("q", dropped)) == f"gopher_dup_{kind}_char_frac"
    assert verdict_of(by_chars, record("q", kept)) is None


def filler(count: int) -> list[str]:
    return [f"f{i:03d}" for i in range(count)]  # distinct 4-character words


@pytest.mark.parametrize(("n", "limit"), [(2, 0.20), (3, 0.18), (4, 0.16)])
def test_top_ngram_share(n, limit):
    """A phrase of n 4-letter words, twice: its n-gram covers (4n + n - 1) * 2 characters of a
    text of T words (5T - 1 characters). The largest T over the limit drops, T + 1 is kept."""
    phrase = [f"ab{i:02d}" for i in range(n)]
    covered = (5 * n - 1) * 2
    total = max(t for t in range(2 * n, 200) if covered / (5 * t - 1) > limit)
    rule = repetition(top_ngram_char_frac={n: limit})
    for words, expected in ((total, f"gopher_top_{n}gram"), (total + 1, None)):
        text = " ".join(phrase + filler(words - 2 * n) + phrase)
        assert verdict_of(rule, record("q", text)) == expected


@pytest.mark.parametrize(("n", "limit"), [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)])
def test_duplicated_ngram_share(n, limit):
    """A 10-word phrase of 4-letter words, twice in a row: the scan finds the second copy's first
    n-gram repeated, counts its n words and jumps past them, (10 // n) times. A text of T words
    has 5T - 1 characters."""
    phrase = [f"ab{i:02d}" for i in range(10)]
    covered = (10 // n) * n * 4
    total = max(t for t in range(20, 400) if covered / (5 * t - 1) > limit)
    rule = repetition(dup_ngram_char_frac={n: limit})
    for words, expected in ((total, f"gopher_dup_{n}gram"), (total + 1, None)):
        text = " ".join(phrase + phrase + filler(words - 20))
        assert verdict_of(rule, record("q", text)) == expected


def test_repetition_defaults_keep_short_and_normal_answers():
    rules = GopherRepetition(GopherRepetitionConfig())
    for answer in ("yes", "Paris is the capital of France.", GOOD_RESPONSE,
                   "The cat sat on the mat. The dog sat on the rug. Both were happy."):
        assert verdict_of(rules, record("q", answer)) is None
    spam = "Buy now! " * 30
    assert verdict_of(rules, record("q", spam)) == "gopher_dup_5gram"
    # A list whose items differ only by their number repeats one line.
    assert verdict_of(rules, record("q", "\n".join(f"{n}. Yes" for n in range(1, 13)))) == "gopher_dup_line_frac"
    # Lists, refrains and per-item labels repeat by design.
    survey = "\n".join(f"{n}. What is your favorite {thing}?" for n, thing in
                       enumerate(["food", "restaurant", "dish to cook", "dessert", "drink", "snack"], 1))
    refrain = "The tide comes in.\nThe sea remembers, the sea forgets.\nThe boats come home.\nThe sea remembers, the sea forgets."
    for answer in (survey, refrain, "1. True\n2. False\n3. True"):
        assert verdict_of(rules, record("q", answer)) is None


# Gopher's own n-gram thresholds (the defaults are set for instruction answers): every rule exercised.
GOPHER_NGRAM_SHARES = {"top_ngram_char_frac": {2: 0.20, 3: 0.18, 4: 0.16},
                       "dup_ngram_char_frac": {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}}


def reference_ngram_verdict(text: str, config: GopherRepetitionConfig) -> tuple[str, float] | None:
    """Gopher's n-gram rules written plainly, on tuples of words (the first implementation): the
    batched, hashed one must decide exactly like it."""
    words = normalize(text).split()
    if len(words) < max(config.ngram_min_words, 1):
        return None
    n_chars = sum(len(word) for word in words) + len(words) - 1
    for n, limit in sorted(config.top_ngram_char_frac.items()):
        counts = Counter(zip(*(words[k:] for k in range(n))))
        if counts:
            ngram, count = counts.most_common(1)[0]
            if (share := (sum(len(word) for word in ngram) + n - 1) * count / n_chars) > limit:
                return f"gopher_top_{n}gram", round(share, 3)
    for n, limit in sorted(config.dup_ngram_char_frac.items()):
        seen, chars, i = set(), 0, 0
        while i <= len(words) - n:
            ngram = tuple(words[i : i + n])
            if ngram in seen:
                chars += sum(len(word) for word in ngram)
                i += n
            else:
                seen.add(ngram)
                i += 1
        if (share := chars / n_chars) > limit:
            return f"gopher_dup_{n}gram", round(share, 3)
    return None


@pytest.mark.parametrize("ngram_min_words", [0, 50])
def test_batched_ngram_rules_decide_like_the_plain_ones(ngram_min_words):
    """Repetitive random texts (a few words, short repeated phrases, non-ASCII) in one batch."""
    rng = random.Random(ngram_min_words)
    vocabulary = ["the", "cat", "sat", "on", "a", "mat", "très", "naïve", "x"]
    texts = []
    for _ in range(400):
        words = rng.choices(vocabulary[: rng.randint(3, 9)], k=rng.randint(1, 150))
        if rng.random() < 0.5:  # splice in a repeated phrase
            phrase = rng.choices(vocabulary, k=rng.randint(2, 12))
            words[rng.randrange(len(words) + 1) :] = phrase * rng.randint(2, 4) + words
        texts.append(" ".join(words))
    config = GopherRepetitionConfig(ngram_min_words=ngram_min_words, **GOPHER_NGRAM_SHARES, **{
        k: 1.0 for k in ("dup_line_frac", "dup_para_frac", "dup_line_char_frac", "dup_para_char_frac")})
    verdicts = GopherRepetition(config).judge([record("q", text) for text in texts])
    got = [(v.reason, v.evidence["value"]) if v else None for v in verdicts]
    assert got == [reference_ngram_verdict(text, config) for text in texts]
    assert sum(v is not None for v in got) > 50  # the rules were exercised


# ---------------------------------------------------------------- Gopher quality ratios

PROSE = "the report says that our small team finished the work on time and the client was happy with it"  # 20 words

QUALITY_CASES = [
    ("gopher_mean_word_length", "a b c d e f g h i j k l m n o p q r s t u", PROSE),
    ("gopher_mean_word_length", " ".join(["incomprehensibilities"] * 20), " ".join(["incomprehensible"] * 10 + ["word"] * 10)),
    ("gopher_alpha_words", PROSE + " @@ ** ;; ~~ && !! ^^ @@ ** ;;", PROSE + " @@ ** ;; ~~"),
    ("gopher_hash_ratio", PROSE + " # # #", PROSE + " #one #two #three"),  # hashtags are words
    ("gopher_ellipsis_ratio", PROSE + " well... maybe... so...", PROSE + " well... maybe... so"),
]


@pytest.mark.parametrize(("reason", "dropped", "kept"), QUALITY_CASES)
def test_gopher_quality(reason, dropped, kept):
    rules = GopherQuality(GopherQualityConfig())
    assert verdict_of(rules, record("q", dropped)) == reason
    assert verdict_of(rules, record("q", kept)) is None


def test_gopher_quality_judges_prose_only():
    """Code, LaTeX, tables, URLs, numbers and formulas are content in an answer, not bad prose."""
    rules = GopherQuality(GopherQualityConfig())
    soup = " @@ ** ;; ~~ && !! ^^ @@ ** ;; " * 3
    for markup in (f"```\n{soup}\n```", f"$${soup}$$", f"| {soup} |", "https://example.com/" + "a" * 80):
        assert verdict_of(rules, record("q", f"{PROSE}\n\n{markup}")) is None
    arithmetic = "The speed 36 km/hr = 36 x 1000 / 3600 m/s = 10 m/s. The length = speed x time = 10 x 9 = 90 m."
    assert verdict_of(rules, record("q", arithmetic + " " + arithmetic)) is None
    assert verdict_of(rules, record("q", "\n".join(f"7 × {n} = {7 * n}" for n in range(1, 11)))) is None


def test_gopher_quality_leaves_short_answers_alone():
    rules = GopherQuality(GopherQualityConfig())
    for answer in ("no", "B", "42", "x = 1 + 2"):  # would fail the ratios, but are fine answers
        assert verdict_of(rules, record("q", answer)) is None


def reference_quality_verdict(text: str, config: GopherQualityConfig) -> tuple[str, float] | None:
    """Gopher's ratios written plainly, one token string at a time (the first implementation):
    the batched one, on bits per character, must decide exactly like it."""
    operator = re.compile(r"[-+*/=<>^|~%:\u00b1\u00d7\u00f7\u2212\u2190-\u21ff\u2200-\u22ff]+")
    text = prose(text)
    tokens = [token for token in text.split() if not operator.fullmatch(token)]
    if len(tokens) < config.min_words:
        return None
    words = [word for word in (token.strip(string.punctuation) for token in tokens) if any(map(str.isalpha, word))]
    mean_length = sum(map(len, words)) / len(words) if words else 0.0
    if words and not config.min_mean_word_length <= mean_length <= config.max_mean_word_length:
        return "gopher_mean_word_length", round(mean_length, 2)
    ratios = [("gopher_alpha_words", sum(any(map(str.isalnum, token)) for token in tokens) / len(tokens), 3),
              ("gopher_hash_ratio", len(re.findall(r"#(?!\w)", text)) / len(tokens), 3),
              ("gopher_ellipsis_ratio", (text.count("...") + text.count("\u2026")) / len(tokens), 3)]
    limits = [(config.min_alpha_word_frac, -1), (config.max_hash_ratio, 1), (config.max_ellipsis_ratio, 1)]
    for (reason, value, digits), (limit, sign) in zip(ratios, limits, strict=True):
        if sign * value > sign * limit:
            return reason, round(value, digits)
    return None


@pytest.mark.parametrize("seed", range(3))
def test_batched_quality_ratios_decide_like_the_plain_ones(seed):
    """Random texts of words, numbers, operators, punctuation runs, hashtags, ellipses, markup and
    non-ASCII letters and spaces, in one batch, against the plain per-token definitions."""
    rng = random.Random(seed)
    pieces = ["word", "Hello,", "the", "(see", "it).", "naïve", "日本語", "straße", "Ω", "½", "١٢٣", "😀", "—", "…",
              "...", "!!!", "?!", "'quoted'", "\"x\"", "__init__", "3.14", "42", "a1", "#", "##", "#tag", "x#", "=", "->",
              "→", "≤", "×", ":", "a-b", "--", "@@", "**", ";;", "- ", "1. ", "$x$", "`code`", "| a |", "http://x.y/z",
              "\u00a0", "\u2003", "\x1c", "\t", "\n", "\n\n", "Donaudampfschifffahrtsgesellschaft", "x" * 12]
    texts = ["".join(rng.choice(pieces) + rng.choice(["", " ", " ", "\n"]) for _ in range(rng.choice([0, 5, 20, 40, 120])))
             for _ in range(600)]
    config = GopherQualityConfig(min_words=5, max_mean_word_length=8.0)  # so that every rule fires
    verdicts = GopherQuality(config).judge([record("q", text) for text in texts])
    got = [(v.reason, v.evidence["value"]) if v else None for v in verdicts]
    assert got == [reference_quality_verdict(text, config) for text in texts]
    fired = Counter(reason for reason, _ in filter(None, got))
    assert set(fired) == {"gopher_mean_word_length", "gopher_alpha_words", "gopher_hash_ratio", "gopher_ellipsis_ratio"}, fired


def test_list_markers_are_removed_at_every_line_start():
    rng = random.Random(0)
    pieces = ["- ", "* ", "+ ", "\u2022 ", "1. ", "12) ", "1234. ", "  - ", "\t3. ", "-", "a - b", "x", "\n", "\n\n", " ", "\t"]
    multiline = re.compile(r"^[ \t]*(?:[-*+\u2022]|\d{1,3}[.)])[ \t]+", re.MULTILINE)
    for _ in range(2000):
        text = "".join(rng.choices(pieces, k=rng.randint(0, 30)))
        assert without_list_markers(text) == multiline.sub("", text), repr(text)
