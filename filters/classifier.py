"""Any fastText classifier as a quality filter (DCLM's and FineWeb-Edu's practice; datatrove's
``FastTextClassifierFilter``, NeMo Curator's ``FastTextQualityFilter``): keep a record when the
model gives ``label`` a probability of at least ``threshold``. The model is the user's (a
``.bin`` or ``.ftz`` trained with ``fasttext supervised``); labels are whatever follows
``__label__`` in its training data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from filters.base import Drop, Filter, FilterConfig, Verdict
from filters.text import TextField, text_of
from gen.records import Record

_LABEL_PREFIX = "__label__"


class ClassifierConfig(FilterConfig):
    type: Literal["classifier"] = "classifier"
    model_path: str
    label: str
    """The label that means "keep" (``hq``; a ``__label__`` prefix is accepted too)."""
    threshold: float = Field(0.5, ge=0, le=1)
    """The lowest probability of ``label`` kept (datatrove's ``keep_labels`` pairs a label with one)."""
    text: TextField = "response"

    @field_validator("model_path")
    @classmethod
    def _model_exists(cls, path: str) -> str:
        if not Path(path).is_file():
            raise ValueError(f"no such file {path}")
        return path

    @field_validator("label")
    @classmethod
    def _bare_label(cls, label: str) -> str:
        return label.removeprefix(_LABEL_PREFIX)


class Classifier(Filter):
    name = "classifier"

    def __init__(self, config: ClassifierConfig):
        super().__init__(config)
        import fasttext

        self._model = fasttext.load_model(config.model_path)
        labels = [name.removeprefix(_LABEL_PREFIX) for name in self._model.get_labels()]
        if config.label not in labels:
            raise ValueError(f"classifier.label: {config.model_path} has no label {config.label!r} "
                             f"(it has: {', '.join(labels)})")

    def judge(self, records: list[Record]) -> list[Verdict]:
        # predict() refuses "\n"; a space keeps the words on either side apart.
        texts = [text_of(record, self.config.text).replace("\n", " ").strip() for record in records]
        labels, probabilities = self._model.predict(texts, k=-1)
        verdicts: list[Verdict] = []
        for ranked, scores in zip(labels, probabilities, strict=True):
            score = round(float(dict(zip(ranked, scores)).get(_LABEL_PREFIX + self.config.label, 0.0)), 4)
            verdicts.append(None if score >= self.config.threshold else
                            Drop("classifier_low_score", {"label": self.config.label, "score": score}))
        return verdicts
