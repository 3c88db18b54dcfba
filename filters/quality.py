"""Rule-based quality filters for instruction data.

Each rule has its own reason code and threshold; defaults come from the papers and peers listed in
``../shared/docs/ANCHORS.md`` (Self-Instruct, Alpaca, Evol-Instruct, Gopher via datatrove), set
for instruction data where those were set for web text (measured by ``benchmarks/bench_rules.py``),
and each default says where it comes from. The rules are pure functions of one record, so these
filters are stateless and cheap.
"""

from __future__ import annotations

import re
import string
import unicodedata
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator

from filters.base import Drop, Filter, FilterConfig, Verdict
from filters.text import TextField, Words, code_blocks, fmix64, normalize, prose, text_of, without_list_markers
from gen.records import Record, instruction_of, response_of


Share = Annotated[float, Field(ge=0, le=1)]  # a fraction of a text
NgramSize = Annotated[int, Field(ge=1)]


class _Phrases:
    """Whole-word phrases found by a regex, with a substring pre-check.

    The regex starts with ``\\b``, so ``re`` tries it at every position (~25-30 us on a
    1,000-character text); ``in`` on each literal costs a few us in all, and a text holding none
    of the phrases cannot match. With ``ignore_case`` the pre-check compares lowercased text, which
    equals ``re.IGNORECASE`` only when text and phrases are ASCII; other texts go straight to the
    regex, so every match is the regex's own.
    """

    def __init__(self, phrases: list[str], pattern: str, ignore_case: bool):
        self._literals = [phrase.lower() if ignore_case else phrase for phrase in phrases]
        self._regex = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
        self._ignore_case = ignore_case
        self._ascii = all(phrase.isascii() for phrase in phrases)

    def search(self, text: str) -> re.Match[str] | None:
        if self._ignore_case:
            if not (self._ascii and text.isascii()):
                return self._regex.search(text)
            haystack = text.lower()
        else:
            haystack = text
        if any(literal in haystack for literal in self._literals):
            return self._regex.search(text)
        return None

# ---------------------------------------------------------------- Self-Instruct instruction rules


# The stages that write a record's instruction themselves; Self-Instruct's rules were made for
# such instructions (its bootstrap's candidates), not for what a user asked.
INSTRUCTION_WRITING_STAGES = frozenset({"self_instruct", "magpie", "evol_instruct"})


def task_input_of(record: Record) -> str:
    """The input appended to the record's instruction (a seed's or a Self-Instruct instance's)."""
    metadata = record.get("metadata") or {}
    return (metadata.get("instance_input") or metadata.get("seed_input") or "").strip()


def instruction_without_input(record: Record) -> str:
    """The first user turn without the task input that follows the instruction.

    Self-Instruct's rules judge the instruction ("Summarize the notes below."), while the user
    turn also holds its input (the notes), which can be of any length and word.
    """
    return _without_input(instruction_of(record).strip(), task_input_of(record))


def _without_input(instruction: str, task_input: str) -> str:
    if task_input and instruction.endswith(task_input):
        return instruction[: -len(task_input)].strip()
    return instruction


def has_machine_instruction(record: Record) -> bool:
    """Whether a stage of the record's chain (``method``, e.g. ``self_instruct>respond``) wrote its
    instruction."""
    return not INSTRUCTION_WRITING_STAGES.isdisjoint((record.get("method") or "").split(">"))


class InstructionRulesConfig(FilterConfig):
    type: Literal["instruction_rules"] = "instruction_rules"
    # Self-Instruct's rules catch what a model gets wrong when it writes instructions; a user's
    # own question ("is this chess position a draw?", a 400-word text to summarise) is not judged
    # by them unless asked: "generated" judges records whose instruction a stage wrote
    # (INSTRUCTION_WRITING_STAGES in `method`), "all" every record.
    applies_to: Literal["generated", "all"] = "generated"
    # Self-Instruct (bootstrap_instructions.py) drops an instruction with <= 3 or > 150 words.
    # Counted without the task input.
    min_words: int = Field(4, ge=0)
    max_words: int = Field(150, ge=1)
    # Self-Instruct's whole-word blacklist (things a text-only model cannot do); Alpaca adds
    # video, audio, music, flowchart, diagram: list them here to get Alpaca's rule.
    blacklist: list[str] = Field(
        default_factory=lambda: [
            "image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
            "map", "maps", "draw", "plot", "go to",
        ]
    )  # fmt: skip
    # Self-Instruct: "Write a program" instructions get unusable answers from a text model.
    banned_prefixes: list[str] = Field(default_factory=lambda: ["Write a program"])

    @model_validator(mode="after")
    def _word_range(self) -> InstructionRulesConfig:
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) must not exceed max_words ({self.max_words})")
        return self


class InstructionRules(Filter):
    """Self-Instruct's instruction rules, on the first user turn without its input."""

    name = "instruction_rules"

    def __init__(self, config: InstructionRulesConfig):
        super().__init__(config)
        words = "|".join(re.escape(word) for word in config.blacklist)
        self._blacklisted = _Phrases(config.blacklist, rf"\b(?:{words})\b", ignore_case=True) if words else None

    def judge(self, records: list[Record]) -> list[Verdict]:
        judge_all = self.config.applies_to == "all"
        return [self.judge_instruction(instruction_without_input(record))
                if judge_all or has_machine_instruction(record) else None for record in records]

    def judge_instruction(self, instruction: str) -> Verdict:
        """The rules on one instruction (the self_instruct stage judges its candidates with this)."""
        instruction = instruction.strip()
        config = self.config
        n_words = len(instruction.split())
        if n_words < config.min_words:
            return Drop("instruction_too_short", {"words": n_words})
        if n_words > config.max_words:
            return Drop("instruction_too_long", {"words": n_words})
        if self._blacklisted and (match := self._blacklisted.search(instruction)):
            return Drop("instruction_blacklisted_word", {"word": match.group(0)})
        for prefix in config.banned_prefixes:
            if instruction.startswith(prefix):
                return Drop("instruction_banned_prefix", {"prefix": prefix})
        first = instruction[:1]
        if first and first in string.punctuation:
            return Drop("instruction_starts_with_punctuation", {"first_char": first})
        if not first.isascii():
            return Drop("instruction_starts_non_ascii", {"first_char": first})
        return None


# ---------------------------------------------------------------- response rules


class ResponseRulesConfig(FilterConfig):
    type: Literal["response_rules"] = "response_rules"
    # Self-Instruct drops a whole generation cut off by the length limit (finish reason "length").
    drop_truncated: bool = True
    # Self-Instruct's prepare_for_finetuning.py: output empty, output == input, output ends in ":".
    drop_empty: bool = True
    drop_same_as_input: bool = True
    drop_ends_with_colon: bool = True
    # Evol-Instruct's elimination rule 3 (a response of only punctuation and stop words), without
    # the stop words: "Yes" and "No" are right answers to yes/no questions.
    drop_only_punctuation: bool = True


def _only_punctuation(text: str) -> bool:
    """No letter, digit or symbol, and no fenced code block with content (ASCII art is all
    punctuation, and right when asked for)."""
    # Characters first: most answers fail at their first letter, before any regex runs.
    if not all(c in string.punctuation or unicodedata.category(c).startswith("P") for c in text if not c.isspace()):
        return False
    return not any(block.strip() for block in code_blocks(text))


class ResponseRules(Filter):
    """Self-Instruct's instance rules, on the last assistant turn.

    "The input" is what the record was given: the seed or instance input (``metadata``), the whole
    first user turn, or the instruction without its input. A response that only echoes one of
    them teaches nothing.
    """

    name = "response_rules"

    def judge(self, records: list[Record]) -> list[Verdict]:
        return [self._judge_one(record) for record in records]

    def _judge_one(self, record: Record) -> Verdict:
        config = self.config
        response = response_of(record).strip()
        if config.drop_truncated and record.get("finish_reason") == "length":
            return Drop("response_truncated", {"finish_reason": "length"})
        if config.drop_empty and not response:
            return Drop("response_empty")
        instruction, task_input = instruction_of(record).strip(), task_input_of(record)
        if config.drop_same_as_input and response in (task_input, instruction, _without_input(instruction, task_input)):
            return Drop("response_same_as_input")
        if config.drop_only_punctuation and _only_punctuation(response):
            return Drop("response_only_punctuation", {"response": response[:40]})
        if config.drop_ends_with_colon and response.endswith(":"):
            return Drop("response_ends_with_colon", {"tail": response[-40:]})
        return None


# ---------------------------------------------------------------- refusals and AI disclaimers


class RefusalConfig(FilterConfig):
    type: Literal["refusal"] = "refusal"
    # Disclaimers drop a response wherever they appear: they are chat-model boilerplate that
    # fine-tuning would teach (the "as an AI language model" filters of Alpaca-cleaned, Vicuna).
    disclaimers: list[str] = Field(
        default_factory=lambda: [
            "as an ai language model", "as a language model", "as a large language model",
            "as an ai assistant", "as an ai model", "as an artificial intelligence",
            "i am an ai", "i'm an ai",
        ]
    )  # fmt: skip
    # Refusal phrases drop only short responses: Evol-Instruct eliminates a response that is a
    # short apology ("sorry", under 80 words); a long answer that says "I'm sorry" in passing stays.
    refusals: list[str] = Field(
        default_factory=lambda: [
            "i'm sorry", "i am sorry", "sorry, but", "i apologize", "i cannot", "i can't",
            "i am unable", "i'm unable", "i am not able to", "i'm not able to", "i won't be able",
        ]
    )  # fmt: skip
    refusal_max_words: int = Field(80, ge=0)


def _phrase_pattern(phrases: list[str]) -> _Phrases | None:
    if not phrases:
        return None
    return _Phrases(phrases, r"\b(?:" + "|".join(re.escape(p) for p in phrases) + r")(?!\w)", ignore_case=False)


class Refusal(Filter):
    name = "refusal"

    def __init__(self, config: RefusalConfig):
        super().__init__(config)
        self._disclaimer = _phrase_pattern([p.lower() for p in config.disclaimers])
        self._refusal = _phrase_pattern([p.lower() for p in config.refusals])

    def judge(self, records: list[Record]) -> list[Verdict]:
        return [self._judge_one(response_of(record)) for record in records]

    def _judge_one(self, response: str) -> Verdict:
        text = response.lower().replace("\u2019", "'")  # curly apostrophes: "I’m sorry"
        if self._disclaimer and (match := self._disclaimer.search(text)):
            return Drop("ai_disclaimer", {"phrase": match.group(0)})
        if self._refusal and (match := self._refusal.search(text)):
            if len(text.split()) < self.config.refusal_max_words:
                return Drop("refusal", {"phrase": match.group(0)})
        return None


# ---------------------------------------------------------------- Gopher repetition


class GopherRepetitionConfig(FilterConfig):
    type: Literal["gopher_repetition"] = "gopher_repetition"
    text: TextField = "response"
    # Gopher's repetition rules (Rae et al. 2021, table A1; datatrove, NeMo Curator) with
    # thresholds for instruction answers, ours, measured by benchmarks/bench_rules.py. Gopher's were
    # set for web pages, where a repeated line is boilerplate; in an answer, lists, refrains, boards
    # and per-item labels repeat lines and phrases by design, while a loop repeats most of the text.
    # On the labelled sets: good answers reach 0.33 duplicate lines by count ("True / False /
    # True"), 0.24 by characters (a tic-tac-toe board), a duplicated 5-gram share of 0.32 (a list of
    # adjectives); loops sit at 0.5 and above. Gopher: lines and paragraphs 0.30 by count, 0.20 by
    # characters; top 2/3/4-gram shares 0.20/0.18/0.16, which a list's repeated "What is your
    # favorite ..." exceeds (off here: they do not tell lists from loops); duplicated
    # 5..10-gram shares 0.15..0.10 (one rule here: a repeated 10-gram repeats its 5-grams).
    # List markers ("1. ", "- ") are removed first, so "1. Yes / 2. Yes / ..." repeats one line.
    # The n-gram shares judge texts of 20+ words: on a 15-word answer one natural repeat ("sat on
    # the" twice) is already 35% of the text (Gopher's own minimum is 50, for documents).
    ngram_min_words: int = Field(20, ge=0)
    dup_line_frac: Share = 0.40
    dup_para_frac: Share = 0.40
    dup_line_char_frac: Share = 0.40
    dup_para_char_frac: Share = 0.40
    top_ngram_char_frac: dict[NgramSize, Share] = Field(default_factory=dict)
    dup_ngram_char_frac: dict[NgramSize, Share] = Field(default_factory=lambda: {5: 0.40})


_LINES = re.compile(r"\n+")
_PARAGRAPHS = re.compile(r"\n{2,}")


def _duplicates(items: list[str]) -> tuple[int, int]:
    """How many items repeat an earlier one, and how many characters those repeats hold."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


class _Repeats:
    """The n-grams of a batch that occur more than once in their text, by n.

    An n-gram can only repeat where the (n-1)-gram at the same word repeats, so each n looks only
    at the previous n's repeated positions: one sort over the whole batch for the smallest n, then
    ever fewer positions.
    """

    def __init__(self, words: Words):
        self.words = words
        self.candidates = np.arange(len(words.starts))  # first words of n-grams that may repeat

    def next(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For the next n: the first word of every repeated n-gram, in text and word order; a
        group number shared by equal n-grams of one text; and how many times each occurs."""
        words = self.words
        ends = (words.first + words.counts)[words.text[self.candidates]]
        positions = self.candidates[self.candidates + n - 1 < ends]
        owners = words.text[positions]
        # fmix64 is a bijection: equal keys mean the same n-gram in the same text.
        keys = fmix64(words.span_hashes(positions, positions + n - 1) ^ owners.astype(np.uint64))
        # Any sort will do (group numbers are ranks of keys, positions are re-sorted below), and
        # numpy's default one is ~10x faster than its stable one on 64-bit keys.
        order = np.argsort(keys)
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
        counts = np.diff(np.append(starts, len(order)))
        group_of = np.repeat(np.arange(len(starts)), counts)
        count_of = np.repeat(counts, counts)
        repeated = np.sort(order[count_of > 1])
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        self.candidates = positions[repeated]
        return self.candidates, group_of[inverse[repeated]], count_of[inverse[repeated]]


def _top_ngram_chars(words: Words, n: int, positions: np.ndarray, groups: np.ndarray,
                     counts: np.ndarray) -> np.ndarray:
    """Per text, the characters covered by its most frequent word n-gram (all its occurrences).

    Ties go to the n-gram that occurs first (``Counter.most_common``'s order), so a text whose
    n-grams are all distinct is scored on its first one.
    """
    span = words.ends[words.first + n - 1 - (words.counts < n) * (n - 1)] - words.starts[words.first]
    chars = np.where(words.counts >= n, span, 0)
    if len(positions):
        # Most occurrences first, then earliest: the first row of each text is its top n-gram.
        best = np.lexsort((positions, -counts, words.text[positions]))
        owners = words.text[positions[best]]
        best = best[np.concatenate(([True], owners[1:] != owners[:-1]))]
        top = positions[best]
        chars[words.text[top]] = (words.ends[top + n - 1] - words.starts[top]) * counts[best]
    return chars


def _duplicated_ngram_chars(words: Words, n: int, positions: np.ndarray, groups: np.ndarray,
                            texts: np.ndarray) -> np.ndarray:
    """Per text of ``texts`` (a mask; others get 0), the characters in n-grams that repeat an earlier one, each word counted once
    (datatrove's find_all_duplicate: after a repeat the scan jumps past it).

    The scan visits only the repeated n-grams: between them it would only step over n-grams it
    never meets again.
    """
    chars = np.zeros(len(words.counts), dtype=np.int64)
    wanted = texts[words.text[positions]]
    positions, groups = positions[wanted], groups[wanted]
    lengths = words.ends[positions + n - 1] - words.starts[positions] - (n - 1)  # words without spaces
    owner, seen, resume = -1, set(), 0
    for position, text, group, length in zip(positions.tolist(), words.text[positions].tolist(),
                                             groups.tolist(), lengths.tolist(), strict=True):
        if text != owner:
            owner, seen, resume = text, set(), 0
        if position < resume:
            continue  # inside a repeat the scan jumped over
        if group in seen:
            chars[text] += length
            resume = position + n
        else:
            seen.add(group)
    return chars


class GopherRepetition(Filter):
    """Gopher's repetition rules: duplicate lines and paragraphs, top and duplicated n-grams.

    N-gram shares are of the normalised text (lowercase, punctuation folded), so "The cat." and
    "the cat" are one 2-gram, and the denominator is that text's length. The line and paragraph
    rules run per text; the n-gram rules run on the whole batch at once, on n-gram hashes
    (:class:`filters.text.Words`) rather than tuples of words.
    """

    name = "gopher_repetition"

    def judge(self, records: list[Record]) -> list[Verdict]:
        texts = [without_list_markers(text_of(record, self.config.text)).strip() for record in records]
        verdicts = [self._lines_and_paragraphs(text) if text else None for text in texts]
        judged = [i for i, (text, verdict) in enumerate(zip(texts, verdicts)) if text and verdict is None]
        normalized = [normalize(texts[i]) for i in judged]
        words = Words(normalized)
        total_chars = np.array([len(text) for text in normalized], dtype=np.int64)
        undecided = words.counts >= max(self.config.ngram_min_words, 1)
        top, dup = self.config.top_ngram_char_frac, self.config.dup_ngram_char_frac
        sizes = [*top, *dup]
        walk = _Repeats(words)
        repeats = {n: walk.next(n) for n in range(min(sizes, default=1), max(sizes, default=0) + 1)}
        # Gopher's order: top 2, 3, 4-gram, then duplicated 5..10-gram; a text takes the first
        # rule that fires, and later rules look only at texts still undecided.
        rules = [(f"gopher_top_{n}gram", limit, lambda n=n: _top_ngram_chars(words, n, *repeats[n]))
                 for n, limit in sorted(top.items())]
        rules += [(f"gopher_dup_{n}gram", limit, lambda n=n: _duplicated_ngram_chars(words, n, *repeats[n][:2], undecided))
                  for n, limit in sorted(dup.items())]
        for reason, limit, chars in rules:
            share = chars() / np.maximum(total_chars, 1)
            for t in np.flatnonzero(undecided & (share > limit)).tolist():
                verdicts[judged[t]] = Drop(reason, {"value": round(float(share[t]), 3)})
                undecided[t] = False
        return verdicts

    def _lines_and_paragraphs(self, text: str) -> Verdict:
        if "\n" not in text:  # one line, one paragraph: nothing can repeat
            return None
        config = self.config
        paragraphs = _PARAGRAPHS.split(text)
        dup_paras, dup_para_chars = _duplicates(paragraphs)
        if dup_paras / len(paragraphs) > config.dup_para_frac:
            return Drop("gopher_dup_para_frac", {"value": round(dup_paras / len(paragraphs), 3)})
        if dup_para_chars / len(text) > config.dup_para_char_frac:
            return Drop("gopher_dup_para_char_frac", {"value": round(dup_para_chars / len(text), 3)})
        lines = _LINES.split(text)
        dup_lines, dup_line_chars = _duplicates(lines)
        if dup_lines / len(lines) > config.dup_line_frac:
            return Drop("gopher_dup_line_frac", {"value": round(dup_lines / len(lines), 3)})
        if dup_line_chars / len(text) > config.dup_line_char_frac:
            return Drop("gopher_dup_line_char_frac", {"value": round(dup_line_chars / len(text), 3)})
        return None


# ---------------------------------------------------------------- Gopher quality ratios


class GopherQualityConfig(FilterConfig):
    type: Literal["gopher_quality"] = "gopher_quality"
    text: TextField = "response"
    # Gopher's ratios were set for web pages, where a page of numbers, symbols or code is not
    # language. In an answer those are the content, so the ratios judge only its prose
    # (filters.text.prose: no code, LaTeX, table rows, URLs, list or heading marks), numbers count
    # as words and operators ("=", "+", "->") as neither. Gopher's 50-word minimum is for
    # documents; on fewer than this many words of prose the ratios are noise ("I am like a moth to
    # a flame" has a mean word length of 2.6), so shorter prose is not judged here: empty and
    # truncated answers are response_rules' job, loops gopher_repetition's.
    min_words: int = Field(20, ge=0)
    # Gopher via datatrove / NeMo Curator: mean word length within [3, 10], at least 80% of words
    # contain a letter, at most 0.1 "#" and at most 0.1 ellipses per word. "#" of a hashtag is
    # not counted: an answer asked for hashtags is all hashtags.
    min_mean_word_length: float = Field(3.0, ge=0)
    max_mean_word_length: float = Field(10.0, ge=0)
    min_alpha_word_frac: Share = 0.80
    max_hash_ratio: float = Field(0.10, ge=0)  # per word, so it may exceed 1
    max_ellipsis_ratio: float = Field(0.10, ge=0)

    @model_validator(mode="after")
    def _length_range(self) -> GopherQualityConfig:
        if self.min_mean_word_length > self.max_mean_word_length:
            raise ValueError(f"min_mean_word_length ({self.min_mean_word_length}) must not exceed "
                             f"max_mean_word_length ({self.max_mean_word_length})")
        return self


# A token of operators only ("=", "->", "×") is neither a word nor a non-word; "#" of a hashtag is
# not counted.
_OPERATOR_CHAR = re.compile(r"[-+*/=<>^|~%:\u00b1\u00d7\u00f7\u2212\u2190-\u21ff\u2200-\u22ff]")
_HASH_SYMBOL = re.compile(r"#(?!\w)")

# What the ratios ask of a character, as bits: whitespace as `str.split` sees it; then, for the
# other characters, not an operator, `str.isalpha`, `str.isalnum`, and in `string.punctuation`
# (what `str.strip(string.punctuation)` removes).
_SPACE, _NOT_OPERATOR, _ALPHA, _ALNUM, _PUNCTUATION = 1, 2, 4, 8, 16


def _flags(char: str) -> int:
    if char.isspace():
        return _SPACE
    return ((not _OPERATOR_CHAR.match(char)) * _NOT_OPERATOR | char.isalpha() * _ALPHA | char.isalnum() * _ALNUM
            | (char in string.punctuation) * _PUNCTUATION)


_ASCII_FLAGS = bytes(map(_flags, map(chr, range(128)))) + bytes(128)
_char_flags = np.frombuffer(_ASCII_FLAGS[:128], dtype=np.uint8)


def _flags_of(text: str) -> bytes:
    """One byte of bits per character of ``text``; for other scripts than ASCII, from a table
    grown on demand (to 256 for Latin-1, further for other scripts) and kept between calls."""
    global _char_flags
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_FLAGS)
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    top = int(codes.max()) + 1
    if top > len(_char_flags):
        size = min(max(256, 1 << (top - 1).bit_length()), 0x110000)
        grown = np.fromiter(map(_flags, map(chr, range(len(_char_flags), size))), dtype=np.uint8)
        _char_flags = np.concatenate((_char_flags, grown))
    return _char_flags[codes].tobytes()


def _punctuation_runs(flags: np.ndarray, positions: np.ndarray, step: int) -> np.ndarray:
    """How many characters from each position on, forwards (``step`` 1) or backwards (-1), are
    punctuation. A run ends at a space at the latest, and ``flags`` starts and ends with one;
    one step per character of the longest run (most are 0 or 1: "word," "(word").
    """
    lengths = np.zeros(len(positions), dtype=np.int64)
    active = np.flatnonzero(flags[positions] & _PUNCTUATION)
    while len(active):
        lengths[active] += 1
        active = active[(flags[positions[active] + step * lengths[active]] & _PUNCTUATION) != 0]
    return lengths


def _ratio_counts(texts: list[str]) -> zip:
    """Per text, the counts Gopher's ratios divide: tokens (whitespace-separated, not operators
    only), words (tokens with a letter), their characters without leading and trailing
    ``string.punctuation``, and tokens with a letter or digit.

    For the whole batch at once, on one byte of bits per character: a token is a run of
    non-whitespace, what it holds is the OR of its characters' bits, and strip removes the runs
    of punctuation it starts and ends with. No token string is built: building them and looping
    over them in Python made the filter ~6x slower.
    """
    space = bytes([_SPACE])  # before and after every text, so every token has a space on each side
    flags = np.frombuffer(space + space.join(map(_flags_of, texts)) + space, dtype=np.uint8)
    is_space = (flags & _SPACE) != 0
    edges = np.flatnonzero(is_space[:-1] != is_space[1:]) + 1
    starts, ends = edges[0::2], edges[1::2]  # a token is [start, end)
    token_flags = np.bitwise_or.reduceat(flags, starts) if len(starts) else flags[:0]  # with the spaces after it
    token = (token_flags & _NOT_OPERATOR) != 0
    word = token & ((token_flags & _ALPHA) != 0)
    word_chars = np.where(word, ends - starts, 0)
    words = np.flatnonzero(word)  # a word has a letter, so its leading and trailing runs are distinct
    word_chars[words] -= _punctuation_runs(flags, starts[words], 1) + _punctuation_runs(flags, ends[words] - 1, -1)
    alnum = token & ((token_flags & _ALNUM) != 0)
    first_token = np.searchsorted(starts, np.cumsum([0] + [len(text) + 1 for text in texts]))
    return zip(*(np.diff(np.concatenate(([0], np.cumsum(per_token)))[first_token]).tolist()
                 for per_token in (token, word, word_chars, alnum)), strict=True)


class GopherQuality(Filter):
    """The Gopher quality ratios, on an answer's prose; words are whitespace tokens."""

    name = "gopher_quality"

    def judge(self, records: list[Record]) -> list[Verdict]:
        texts = [prose(text_of(record, self.config.text)) for record in records]
        if not texts:
            return []
        return [self._verdict(text, *counts) for text, counts in zip(texts, _ratio_counts(texts), strict=True)]

    def _verdict(self, text: str, tokens: int, words: int, word_chars: int, alnum_tokens: int) -> Verdict:
        config = self.config
        if tokens < config.min_words:
            return None
        mean_length = word_chars / words if words else 0.0  # none: numbers only
        if words and not config.min_mean_word_length <= mean_length <= config.max_mean_word_length:
            return Drop("gopher_mean_word_length", {"value": round(mean_length, 2)})
        alpha_frac = alnum_tokens / tokens
        if alpha_frac < config.min_alpha_word_frac:
            return Drop("gopher_alpha_words", {"value": round(alpha_frac, 3)})
        hash_ratio = (len(_HASH_SYMBOL.findall(text)) if "#" in text else 0) / tokens
        if hash_ratio > config.max_hash_ratio:
            return Drop("gopher_hash_ratio", {"value": round(hash_ratio, 3)})
        ellipsis_ratio = (text.count("...") + text.count("\u2026")) / tokens
        if ellipsis_ratio > config.max_ellipsis_ratio:
            return Drop("gopher_ellipsis_ratio", {"value": round(ellipsis_ratio, 3)})
        return None
