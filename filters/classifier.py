"""A fastText classifier's score for one label: keep records at or above a threshold.

Any supervised fastText model (``.bin`` or ``.ftz``) works: a quality classifier as DCLM uses
(``__label__hq`` against ``__label__cc``), an educational-value one in FineWeb-Edu's manner, or
one trained on your own labelled records. The score is fastText's probability for ``label``
(its name without ``__label__``), taken from all the model's labels, so it is the same whichever
label ranks first.

``model_path`` is a local path or a URI (``gen/storage.py``); fastText reads only local files, so
a model in an object store is copied to a temporary file, loaded, and the copy removed.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
from typing import Literal

from pydantic import Field, field_validator

from filters.base import Drop, Filter, FilterConfig, Verdict
from filters.text import TextField, text_of
from gen.errors import ConfigurationError
from gen.records import Record
from gen.storage import Location

_LABEL_PREFIX = "__label__"
# Every model fastText saves (.bin, and .ftz quantised) starts with this int32, little-endian
# (FASTTEXT_FILEFORMAT_MAGIC_INT32 in its fasttext.cc): checked at spec time, without loading.
_FASTTEXT_MAGIC = struct.pack("<i", 793712314)


class ClassifierConfig(FilterConfig):
    type: Literal["classifier"] = "classifier"
    model_path: str  # a fastText model: a local path (relative to the spec file) or a URI
    # The label whose probability is judged, without "__label__": DCLM's quality model
    # (mlfoundations/fasttext-oh-eli5: OpenHermes-2.5 and r/ExplainLikeImFive answers against
    # RefinedWeb pages) scores "hq" against "cc".
    label: str = Field(min_length=1)
    # No default: a score's scale belongs to its model. DCLM-Baseline keeps documents whose "hq"
    # probability is >= 0.018112, its pool's top 10% (Li et al. 2024); FineWeb-Edu keeps pages its
    # classifier scores >= 3 on a 0-5 educational scale (Penedo et al. 2024; their classifier is a
    # regression head on an embedding model, not fastText; a fastText model trained on its
    # annotations gives a probability per score label instead).
    threshold: float = Field(ge=0, le=1)
    # "both" (instruction and answer together) is how DCLM's positives were written: an
    # OpenHermes or ELI5 question with its answer.
    text: TextField = "both"

    @field_validator("model_path")
    @classmethod
    def _readable_model(cls, path: str) -> str:
        try:
            location = Location.of(path)
            with location.fs.open_input_stream(location.path) as f:
                head = f.read(len(_FASTTEXT_MAGIC))
        except FileNotFoundError:
            raise ValueError(f"no such file {path}") from None
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc}") from None
        if head != _FASTTEXT_MAGIC:
            raise ValueError(f"{path} is not a fastText model (no fastText header)")
        return path


class Classifier(Filter):
    name = "classifier"

    def __init__(self, config: ClassifierConfig):
        super().__init__(config)
        self._model = _load_model(Location.of(config.model_path))
        self._label = _LABEL_PREFIX + config.label
        if self._label not in self._model.labels:
            known = ", ".join(label.removeprefix(_LABEL_PREFIX) for label in self._model.labels)
            raise ConfigurationError(f"classifier: {config.model_path} has no label {config.label!r} (its labels: {known})")

    def judge(self, records: list[Record]) -> list[Verdict]:
        # predict() refuses "\n"; a space keeps the words on either side apart.
        texts = [text_of(record, self.config.text).replace("\n", " ").strip() for record in records]
        verdicts: list[Verdict] = [None if text else Drop("classifier_no_text") for text in texts]
        with_text = [i for i, text in enumerate(texts) if text]
        if not with_text:
            return verdicts
        labels, probabilities = self._model.predict([texts[i] for i in with_text], k=-1)
        for i, record_labels, record_probabilities in zip(with_text, labels, probabilities, strict=True):
            score = float(record_probabilities[record_labels.index(self._label)])
            if score < self.config.threshold:
                verdicts[i] = Drop("classifier_low_score", {"label": self.config.label, "score": round(score, 6)})
        return verdicts


def _load_model(location: Location):
    import fasttext

    if location.local:
        return fasttext.load_model(location.path)
    with tempfile.NamedTemporaryFile(suffix=f"-{location.name}") as copy:
        with location.fs.open_input_stream(location.path) as source:
            shutil.copyfileobj(source, copy, 1 << 20)
        copy.flush()
        return fasttext.load_model(copy.name)
