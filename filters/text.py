"""Text helpers every filter shares: which text of a record is judged, and one normalisation.

One normalisation for dedup, decontamination and the repetition rules, so that "the same text"
means the same thing everywhere: lowercase, punctuation and symbols folded to spaces, whitespace
runs folded to one space (datatrove's MinHash normalisation, minus its digit folding: in
instruction data "add 2 and 3" and "add 7 and 9" are different tasks).
"""

from __future__ import annotations

import re
from typing import Literal

from gen.records import Record, instruction_of, response_of

TextField = Literal["instruction", "response", "both"]
"""Which text of a record a filter judges: the first user turn, the last assistant turn, or both."""

_NOT_WORD = re.compile(r"[\W_]+")


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


def normalized_words(text: str) -> list[str]:
    """Lowercased words with punctuation, symbols and whitespace folded away."""
    return _NOT_WORD.sub(" ", text.lower()).split()


def word_ngrams(words: list[str], n: int) -> list[str]:
    """The word n-grams of ``words`` as space-joined strings, in order (with repeats)."""
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
