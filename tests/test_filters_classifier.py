"""The fastText classifier filter, against a real fastText model trained here on labelled answers:
half of tests/data/good_answers.jsonl labelled ``good`` and their refusals (tests/labelled_answers.py)
labelled ``refused``; the other half is held out."""

from __future__ import annotations

import subprocess
import sys

import fasttext
import pyarrow.fs as pafs
import pytest
from pydantic import TypeAdapter, ValidationError

from filters import FilterSpec, build_chain
from filters.classifier import Classifier, ClassifierConfig
from filters.text import text_of
from gen.errors import ConfigurationError
from gen.records import response_of
from gen.spec import SpecError, load_spec
from tests.labelled_answers import GOOD_ANSWERS, read_good, refusal, with_response


def _line(label: str, text: str) -> str:
    return f"__label__{label} " + text.replace("\n", " ")


@pytest.fixture(scope="module")
def answers():
    """(training, held-out) halves of the good answers, each with its refusals."""
    good = read_good(GOOD_ANSWERS)
    return good[::2], good[1::2]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, answers):
    training, _ = answers
    folder = tmp_path_factory.mktemp("classifier")
    train = folder / "train.txt"
    train.write_text("\n".join(_line("good", response_of(r)) for r in training) + "\n"
                     + "\n".join(_line("refused", response_of(refusal(r))) for r in training) + "\n")
    model = _train(train)
    path = folder / "answers.bin"
    model.save_model(str(path))
    return path


def _train(train_file):
    """Word bigrams, 25 epochs at lr 0.5: every held-out good answer scores >= 0.99 "good" (5 epochs at
    0.1, the defaults: 13-21 of 27 >= 0.5). One thread and a seed, so every run makes the same model.
    The bigrams also keep fastText's hash buckets in use: with unigrams only, fastText's Python wrapper
    sets ``bucket=0``, and fasttext-numpy2-wheel 0.9.2 then fails training with "Encountered NaN" in
    about half the calls, in every call with dim 10-32 (CI failed 20 attempts in a row)."""
    return fasttext.train_supervised(str(train_file), epoch=25, lr=0.5, wordNgrams=2, bucket=100_000,
                                     thread=1, seed=1, verbose=0)


def classifier(model_path, **settings) -> Classifier:
    return Classifier(ClassifierConfig(model_path=str(model_path), **{"label": "good", "threshold": 0.5,
                                                                      "text": "response", **settings}))


def probability(model_path, text: str, label: str) -> float:
    labels, probabilities = fasttext.load_model(str(model_path)).predict(text.replace("\n", " ").strip(), k=-1)
    return float(probabilities[labels.index(f"__label__{label}")])


def test_held_out_good_answers_kept_and_refusals_dropped_with_the_score(model_path, answers):
    _, held_out = answers
    refusals = [refusal(r) for r in held_out]
    kept, dropped = classifier(model_path)([dict(r) for r in held_out + refusals])
    kept_ids, dropped_by_id = {r["id"] for r in kept}, {r["id"]: r["_drop"] for r in dropped}
    assert sum(r["id"] in kept_ids for r in held_out) >= 0.9 * len(held_out)
    assert all(r["id"] in dropped_by_id for r in refusals)
    for record in held_out + refusals:
        score = probability(model_path, response_of(record), "good")
        if record["id"] in kept_ids:
            assert score >= 0.5
        else:
            drop = dropped_by_id[record["id"]]
            assert (drop["filter"], drop["reason"]) == ("classifier", "classifier_low_score")
            assert drop["evidence"] == {"label": "good", "score": round(score, 6)} and score < 0.5


def test_the_other_label_keeps_the_other_records(model_path, answers):
    _, held_out = answers
    refusals = [refusal(r) for r in held_out]
    verdicts = classifier(model_path, label="refused").judge(held_out + refusals)
    assert all(v is None for v in verdicts[len(held_out):])
    assert sum(v is not None for v in verdicts[: len(held_out)]) >= 0.9 * len(held_out)
    assert {v.evidence["label"] for v in verdicts if v} == {"refused"}


def test_a_score_equal_to_the_threshold_is_kept(model_path, answers):
    record = refusal(answers[1][0])
    score = probability(model_path, response_of(record), "good")
    assert classifier(model_path, threshold=score).judge([record]) == [None]
    assert classifier(model_path, threshold=min(1.0, score + 1e-6)).judge([record])[0].reason == "classifier_low_score"


def test_the_judged_text_is_the_one_configured(model_path, answers):
    good = answers[1][0]
    refused = refusal(good)  # the same instruction, a refusal for an answer
    by_response = classifier(model_path, text="response")
    assert by_response.judge([good]) == [None] and by_response.judge([refused]) != [None]
    by_instruction = classifier(model_path, text="instruction", threshold=0.0)
    assert by_instruction.judge([good]) == by_instruction.judge([refused]) == [None]
    strict = classifier(model_path, text="both", threshold=1.0)
    for record in (good, refused):
        (verdict,) = strict.judge([record])
        assert verdict.evidence["score"] == round(probability(model_path, text_of(record, "both"), "good"), 6)


def test_no_text_is_its_own_reason(model_path, answers):
    empty = with_response(answers[1][0], " \n ", "empty")
    assert classifier(model_path).judge([empty])[0].reason == "classifier_no_text"
    assert classifier(model_path, threshold=0.0).judge([empty])[0].reason == "classifier_no_text"


def test_built_from_a_spec_entry_by_build_chain(model_path, answers):
    configs = TypeAdapter(list[FilterSpec]).validate_python(
        [{"type": "classifier", "model_path": str(model_path), "label": "good", "threshold": 0.5, "text": "response"}])
    chain = build_chain(configs)
    kept, dropped = chain([dict(answers[1][0]), refusal(answers[1][0])])
    assert len(kept) == 1 and len(dropped) == 1
    assert chain.stats() == {"classifier": {"kept": 1, "dropped": {"classifier_low_score": 1}}}


def test_a_label_the_model_does_not_have_is_an_error_naming_its_labels(model_path):
    with pytest.raises(ConfigurationError, match=r"has no label 'hq' \(its labels: (good, refused|refused, good)\)"):
        classifier(model_path, label="hq")


def test_missing_or_unreadable_model_files_are_spec_errors(tmp_path, model_path):
    def problem(path) -> str:
        with pytest.raises(ValidationError) as error:
            ClassifierConfig(model_path=str(path), label="good", threshold=0.5)
        return str(error.value)

    assert f"no such file {tmp_path / 'gone.bin'}" in problem(tmp_path / "gone.bin")
    (tmp_path / "notes.txt").write_text("__label__good not a model\n")
    assert f"{tmp_path / 'notes.txt'} is not a fastText model" in problem(tmp_path / "notes.txt")
    (tmp_path / "empty.bin").write_bytes(b"")
    assert "is not a fastText model" in problem(tmp_path / "empty.bin")
    assert f"cannot read {tmp_path}" in problem(tmp_path)  # a directory


SPEC = """\
seeds: {{paths: [seeds.jsonl]}}
filters:
  - type: classifier
    model_path: {model_path}
    label: good
    threshold: 0.5
output: {{dir: out}}
"""


def test_sdg_validate_names_the_field_and_the_file(tmp_path, model_path):
    (tmp_path / "seeds.jsonl").write_text('{"instruction": "Say hi.", "output": "Hi!"}\n')
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(model_path="models/gone.bin"))
    result = subprocess.run([sys.executable, "-m", "gen.cli", "validate", str(spec)], capture_output=True, text=True)
    assert result.returncode == 2
    assert f"filters.0.model_path: Value error, no such file {tmp_path / 'models' / 'gone.bin'}" in result.stderr
    assert "Traceback" not in result.stderr
    # Relative to the spec file, as every input file is.
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "gone.bin").write_bytes(model_path.read_bytes())
    result = subprocess.run([sys.executable, "-m", "gen.cli", "validate", str(spec)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "1 filter(s)" in result.stdout


def test_the_model_counts_in_the_spec_identity_by_content(tmp_path, model_path):
    (tmp_path / "seeds.jsonl").write_text('{"instruction": "Say hi.", "output": "Hi!"}\n')
    (tmp_path / "model.bin").write_bytes(model_path.read_bytes())
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(model_path="model.bin"))
    before = load_spec(spec).identity()
    (tmp_path / "model.bin").write_bytes(model_path.read_bytes() + b"\0")  # a changed model
    assert load_spec(spec).identity() != before
    with pytest.raises(SpecError, match="filters.0.threshold"):
        load_spec(spec, ["filters.0.threshold=2"])


def test_a_model_in_an_object_store_judges_as_the_local_one(s3_bucket, model_path, answers):
    uri = f"{s3_bucket}/models/answers.bin"
    fs, path = pafs.FileSystem.from_uri(uri)
    with fs.open_output_stream(path) as f:
        f.write(model_path.read_bytes())
    records = answers[1][:6] + [refusal(r) for r in answers[1][:6]]
    remote = classifier(uri).judge(records)
    assert remote == classifier(model_path).judge(records)
    assert sum(v is not None for v in remote) >= 6
    assert "no such file" in str(pytest.raises(ValidationError, ClassifierConfig, model_path=f"{s3_bucket}/gone.bin",
                                                label="good", threshold=0.5).value)
