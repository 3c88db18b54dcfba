"""classifier: a fastText model trained here on labelled text (the hand-written good answers as
``hq``, spam-like texts as ``lq``), and the filter judged against it on held-out text of both."""

from __future__ import annotations

import random

import pytest
from labelled_answers import GOOD_ANSWERS, read_good, with_response

from filters import build_chain
from filters.classifier import Classifier, ClassifierConfig
from gen.records import response_of


@pytest.fixture(scope="module")
def labelled():
    good = read_good(GOOD_ANSWERS)
    rng = random.Random(0)
    pitch = ["BUY", "cheap", "click here", "FREE", "offer", "winner", "!!!", "limited time", "subscribe", "$$$",
             "best price", "act now", "discount", "100% guaranteed", "visit our site"]
    bad = [with_response(record, " ".join(rng.choices(pitch, k=12)), "spam") for record in good]
    rng.shuffle(good)
    rng.shuffle(bad)
    return good, bad


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, labelled):
    import fasttext

    good, bad = labelled
    lines = [f"__label__hq {response_of(r)}" for r in good[: len(good) // 2]]
    lines += [f"__label__lq {response_of(r)}" for r in bad[: len(bad) // 2]]
    random.Random(1).shuffle(lines)
    train = tmp_path_factory.mktemp("classifier") / "train.txt"
    train.write_text("\n".join(line.replace("\n", " ") for line in lines) + "\n")
    model = fasttext.train_supervised(input=str(train), epoch=50, lr=0.5, wordNgrams=2, seed=0, thread=1)
    path = train.with_name("quality.bin")
    model.save_model(str(path))
    return path


def test_the_filter_keeps_what_the_model_calls_hq_on_held_out_text(model_path, labelled):
    good, bad = labelled
    held_out_good, held_out_bad = good[len(good) // 2:], bad[len(bad) // 2:]
    classifier = Classifier(ClassifierConfig(model_path=str(model_path), label="__label__hq", threshold=0.5))
    kept, dropped = classifier([dict(r) for r in held_out_good + held_out_bad])
    kept_ids = {r["id"] for r in kept}
    good_kept = sum(r["id"] in kept_ids for r in held_out_good) / len(held_out_good)
    bad_kept = sum(r["id"] in kept_ids for r in held_out_bad) / len(held_out_bad)
    assert good_kept >= 0.8 and bad_kept <= 0.2, (good_kept, bad_kept)
    # Each decision is the model's own probability of the label against the threshold.
    import fasttext

    model = fasttext.load_model(str(model_path))
    for record in held_out_good + held_out_bad:
        labels, scores = model.predict(response_of(record).replace("\n", " ").strip(), k=-1)
        probability = dict(zip(labels, scores)).get("__label__hq", 0.0)
        assert (record["id"] in kept_ids) == (round(float(probability), 4) >= 0.5)
    verdict = dropped[0]["_drop"]
    assert verdict["reason"] == "classifier_low_score" and verdict["evidence"]["label"] == "hq"
    assert 0 <= verdict["evidence"]["score"] < 0.5
    # The threshold is the label's probability: at 0 everything is kept, above 1 nothing could be.
    everything, _ = Classifier(ClassifierConfig(model_path=str(model_path), label="hq", threshold=0))(
        [dict(r) for r in held_out_bad])
    assert len(everything) == len(held_out_bad)


def test_a_label_the_model_does_not_have_or_a_missing_model_is_refused(model_path, tmp_path):
    from pydantic import TypeAdapter, ValidationError

    from filters import FilterSpec

    with pytest.raises(ValueError, match=r"classifier.label: .* has no label 'good' \(it has: (hq, lq|lq, hq)\)"):
        build_chain(TypeAdapter(list[FilterSpec]).validate_python(
            [{"type": "classifier", "model_path": str(model_path), "label": "good"}]))
    with pytest.raises(ValidationError, match="no such file"):
        ClassifierConfig(model_path=str(tmp_path / "missing.bin"), label="hq")
