"""Text helpers every filter shares: which text of a record is judged, and one normalisation.

One normalisation for dedup, decontamination and the repetition rules, so that "the same text"
means the same thing everywhere: lowercase, punctuation and symbols folded to spaces, whitespace
runs folded to one space (datatrove's MinHash normalisation, minus its digit folding: in
instruction data "add 2 and 3" and "add 7 and 9" are different tasks).
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np

from gen.records import Record, instruction_of, response_of

TextField = Literal["instruction", "response", "both"]
"""Which text of a record a filter judges: the first user turn, the last assistant turn, or both."""

_NOT_WORD = re.compile(r"[\W_]+")
# The same folding for ASCII text as a byte table: 3x faster than the regex, same result.
_ASCII_FOLD = bytes(
    (c | 0x20) if chr(c).isalpha() else c if chr(c).isdigit() else ord(" ") for c in range(128)
) + bytes(128)


def utf8_safe(text: str) -> str:
    """``text`` with anything that cannot be encoded as UTF-8 replaced by U+FFFD.

    Readers that decode with ``errors="surrogateescape"`` leave lone surrogates in strings; fastText
    and xxhash encode to UTF-8 and would raise on them.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def text_of(record: Record, field: TextField) -> str:
    """The judged text of ``record``; "both" joins instruction and response with a newline."""
    if field == "instruction":
        text = instruction_of(record)
    elif field == "response":
        text = response_of(record)
    else:
        text = "\n".join(part for part in (instruction_of(record), response_of(record)) if part)
    return utf8_safe(text)


def normalize(text: str) -> str:
    """Lowercase; punctuation, symbols and whitespace runs folded to single spaces; stripped."""
    if text.isascii():
        return " ".join(text.encode("ascii").translate(_ASCII_FOLD).decode("ascii").split())
    return _NOT_WORD.sub(" ", text.lower()).strip()


# Markup of instruction answers that is not prose. Web-text ratios (Gopher's) judge prose only:
# code, math and tables are right to have short or long "words", digits and symbols.
_FENCED_CODE = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n]*\n?(.*?)(?:^[ \t]*\1[ \t]*$|\Z)", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_MATH = re.compile(r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|\$[^$\n]+\$", re.DOTALL)
_TABLE_ROW = re.compile(r"^[ \t]*\|.*\|[ \t]*$", re.MULTILINE)
_URL = re.compile(r"\b(?:https?://|www\.)\S+")
_HEADING_MARK = re.compile(r"^[ \t]*#{1,6}[ \t]+", re.MULTILINE)
_MARKUP = ((_FENCED_CODE, ("```", "~~~")), (_MATH, ("$", "\\[", "\\(")), (_INLINE_CODE, ("`",)),
           (_TABLE_ROW, ("|",)), (_URL, ("http", "www.")), (_HEADING_MARK, ("#",)))
# A list marker starts a line. Written as "after a newline" (the text is given one in front), the
# regex starts with a literal that `re` finds with a fast scan, where a MULTILINE "^" is tried at
# every position: ~5x faster on a one-line answer, the same matches.
_LIST_MARK_AFTER_NEWLINE = re.compile(r"\n[ \t]*(?:[-*+\u2022]|\d{1,3}[.)])[ \t]+")


def code_blocks(text: str) -> list[str]:
    """The contents of the fenced code blocks of a markdown answer (an unclosed one runs to the end)."""
    if "```" not in text and "~~~" not in text:  # the regex is tried at every position: ~10x the cost
        return []
    return [match.group(2) for match in _FENCED_CODE.finditer(text)]


def without_list_markers(text: str) -> str:
    """``text`` with the bullet or number that starts a list item removed from each line."""
    return _LIST_MARK_AFTER_NEWLINE.sub("\n", "\n" + text)[1:]


def prose(text: str) -> str:
    """The prose of a markdown answer: without fenced or inline code, LaTeX math, table rows,
    URLs, heading marks and list markers."""
    for markup, marks in _MARKUP:
        for mark in marks:
            if mark in text:  # a regex is tried at every position: ~10x the cost of `in`
                text = markup.sub(" ", text)
                break
    return without_list_markers(text)


PRIME = np.uint64(0x100000001B3)  # odd, so invertible modulo 2**64
_PRIME_INVERSE = np.uint64(pow(int(PRIME), -1, 1 << 64))
_powers = np.ones(1, dtype=np.uint64)
_inverse_powers = np.ones(1, dtype=np.uint64)


def _power_tables(length: int) -> tuple[np.ndarray, np.ndarray]:
    """PRIME**i and PRIME**-i modulo 2**64 for i < length (grown on demand, kept between calls)."""
    global _powers, _inverse_powers
    if len(_powers) < length:
        size = max(length, 2 * len(_powers))
        _powers = np.cumprod(np.full(size, PRIME, dtype=np.uint64)) * _PRIME_INVERSE
        _inverse_powers = np.cumprod(np.full(size, _PRIME_INVERSE, dtype=np.uint64)) * PRIME
    return _powers[:length], _inverse_powers[:length]


def fmix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: spreads a polynomial hash over all 64 bits."""
    values = values ^ (values >> np.uint64(33))
    values = values * np.uint64(0xFF51AFD7ED558CCD)
    values = values ^ (values >> np.uint64(33))
    values = values * np.uint64(0xC4CEB9FE1A85EC53)
    return values ^ (values >> np.uint64(33))


class Words:
    """The words of a batch of normalised texts, located in one array of their code points.

    Words are the runs between single spaces (:func:`normalize` leaves no other separator). Any
    span of a text hashes to a 64-bit polynomial hash of its code points, read off one prefix sum
    over the whole batch and then mixed: equal spans hash equally wherever they are, and no
    substring is ever built (building n-gram strings in Python costs more than what they feed).
    Offsets count characters, not UTF-8 bytes, so lengths agree with ``len()``.
    """

    def __init__(self, normalized: list[str]):
        joined = " ".join(normalized)
        if joined.isascii():
            codes = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
        else:
            codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
        codes = codes.astype(np.uint64)
        powers, self._inverse_powers = _power_tables(len(codes) + 1)
        self._prefix = np.zeros(len(codes) + 1, dtype=np.uint64)
        np.cumsum(codes * powers[: len(codes)], out=self._prefix[1:])

        spaces = np.flatnonzero(codes == ord(" "))
        starts = np.concatenate(([0], spaces + 1))
        ends = np.concatenate((spaces, [len(codes)]))
        text_starts = np.cumsum([0] + [len(text) + 1 for text in normalized[:-1]])
        text = np.searchsorted(text_starts, starts, side="right") - 1
        real = ends > starts  # an empty text leaves one empty "word"
        self.starts, self.ends, self.text = starts[real], ends[real], text[real]
        self.counts = np.bincount(self.text, minlength=len(normalized))  # words per text
        self.first = np.cumsum(self.counts) - self.counts  # index of each text's first word

    def span_hashes(self, first_words: np.ndarray, last_words: np.ndarray) -> np.ndarray:
        """Hashes of the spans from the start of word ``first_words[i]`` to the end of ``last_words[i]``."""
        starts, ends = self.starts[first_words], self.ends[last_words]
        return fmix64((self._prefix[ends] - self._prefix[starts]) * self._inverse_powers[starts])

    def ngrams(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of every word n-gram that fits in its text, and the index of its first word.

        A text's n-grams are consecutive and in word order; a text of fewer than ``n`` words has none.
        """
        first_words = np.flatnonzero(np.arange(len(self.starts)) + n - 1 < (self.first + self.counts)[self.text])
        return self.span_hashes(first_words, first_words + n - 1), first_words


def shingle_hashes(normalized: list[str], n: int) -> tuple[np.ndarray, list[int]]:
    """64-bit hashes of the word n-grams of each normalised text, computed for the batch at once.

    Returns the hashes of all texts, in order (text ``i``'s n-grams, in word order, are
    ``hashes[bounds[i]:bounds[i + 1]]``), and the bounds. A text of fewer than ``n`` words is one
    shingle (all its words), so short texts still match; an empty text has none.
    """
    words = Words(normalized)
    hashes, first_words = words.ngrams(n)
    short = np.flatnonzero((words.counts > 0) & (words.counts < n))
    hashes = np.concatenate((hashes, words.span_hashes(words.first[short], words.first[short] + words.counts[short] - 1)))
    owners = np.concatenate((words.text[first_words], short))
    order = np.argsort(owners, kind="stable")
    bounds = np.searchsorted(owners[order], np.arange(len(normalized) + 1)).tolist()
    return hashes[order], bounds
