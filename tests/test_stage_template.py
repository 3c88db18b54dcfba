"""template: P3-style rendering, deterministic template choice, the sandbox, and tolerant errors."""

from __future__ import annotations

import asyncio

import pyarrow.dataset as ds
import pytest
from pydantic import ValidationError
from stage_fakes import context

from gen.records import is_dropped
from gen.run import run
from gen.spec import load_spec
from gen.stages.template import Template, TemplateConfig
from tests.conftest import REPO
from tests.runs import run_stopped_by_ctrl_c_after_shard

TEMPLATES = [
    {"name": "is_positive", "jinja": "Is this review positive?\n{{ text }} ||| {{ answer_choices[label | int] }}"},
    {"name": "sentiment", "jinja": "What is the sentiment of: {{ text }} ||| {{ answer_choices[label | int] }}"},
    {"name": "tone", "jinja": "Review: {{ row['text'] }}\nTone? ||| {{ answer_choices[label | int] }}"},
]


def row_record(i: int, row: dict) -> dict:
    return {"id": f"r{i}", "work_key": f"r{i}", "seed_id": f"r{i}", "method": "seed", "messages": [],
            "metadata": {"row": row}}


def stage(**config) -> Template:
    return Template(TemplateConfig(templates=TEMPLATES, answer_choices=["negative", "positive"], **config),
                    context(None))


def test_rows_render_through_one_template_chosen_from_the_seed():
    rows = [row_record(i, {"text": f"Review number {i}", "label": str(i % 2)}) for i in range(20)]
    first = [asyncio.run(stage().process(r)) for r in rows]
    again = [asyncio.run(stage().process(r)) for r in rows]
    assert first == [[{**a, "created_at": b["created_at"]} for a, b in zip(x, y)] for x, y in zip(again, first)]
    assert all(len(out) == 1 and not is_dropped(out[0]) for out in first)
    assert len({out[0]["template"] for out in first}) > 1  # templates vary across examples
    record = first[1][0]
    assert record["messages"][1] == {"role": "assistant", "content": "positive"}
    assert "Review number 1" in record["messages"][0]["content"]
    assert record["stage"] == "template" and record["model"] is None and record["template_hash"]


def test_every_template_per_example_like_p3():
    out = asyncio.run(stage(templates_per_example=3).process(row_record(0, {"text": "Great", "label": "1"})))
    assert sorted(r["template"] for r in out) == ["is_positive", "sentiment", "tone"]
    assert len({r["id"] for r in out}) == 3


def test_bad_rows_and_unsafe_templates_are_dropped_not_raised():
    [missing] = asyncio.run(stage().process(row_record(0, {"label": "1"})))
    assert missing["_drop"]["reason"] == "template_error"
    [no_row] = asyncio.run(stage().process({**row_record(1, {}), "metadata": {}}))
    assert no_row["_drop"]["reason"] == "no_row"
    unsafe = Template(TemplateConfig(templates=[
        {"name": "evil", "jinja": "{{ text.__class__.__mro__[1].__subclasses__() }} ||| x"}]), context(None))
    [record] = asyncio.run(unsafe.process(row_record(2, {"text": "hi"})))
    assert record["_drop"]["reason"] in ("template_unsafe", "template_error")
    assert "subclasses" not in str(record["messages"])


@pytest.mark.timeout(60)
def test_a_template_over_the_render_bounds_drops_the_row_naming_the_template():
    costly = Template(TemplateConfig(templates=[
        {"name": "bomb", "jinja": "{{ text * 100000000 }} ||| {{ label }}"},
        {"name": "loops", "jinja": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                                   "{% endfor %}{{ text }} ||| {{ label }}"}], templates_per_example=2), context(None))
    records = asyncio.run(costly.process(row_record(0, {"text": "a", "label": "1"})))
    assert sorted((r["template"], r["_drop"]["reason"]) for r in records) == [
        ("bomb", "template_too_costly"), ("loops", "template_too_costly")]
    assert all(f"template {r['template']!r}: " in r["_drop"]["evidence"]["error"] for r in records)


def test_malformed_templates_are_refused_when_the_spec_is_read():
    with pytest.raises(ValidationError, match=r"exactly one \|\|\|"):
        TemplateConfig(templates=[{"name": "a", "jinja": "no separator"}])
    with pytest.raises(ValidationError, match="syntax error"):
        TemplateConfig(templates=[{"name": "a", "jinja": "{{ text ||| x"}])
    with pytest.raises(ValidationError, match="distinct"):
        TemplateConfig(templates=[TEMPLATES[0], TEMPLATES[0]])


def test_the_example_spec_runs_end_to_end_and_reruns_identically(tmp_path, ray_session):
    rendered = []
    for name in ("first", "second"):  # two output dirs: nothing resumed, every row rendered again
        out = tmp_path / name
        run(load_spec(REPO / "examples" / "template.yaml", [f"output.dir={out}"]), progress=False, report=False)
        rows = ds.dataset(out / "data", format="parquet").to_table().to_pylist()
        rendered.append(sorted((row["id"], row["template"], str(row["messages"])) for row in rows))
    assert len(rendered[0]) == 8 and rendered[0] == rendered[1]


def test_a_model_free_run_stopped_by_ctrl_c_resumes_to_the_same_records(tmp_path, ray_session):
    """Model-free work items are taken in turn, without a task each: a signal still stops the run
    between them, what was committed stays, and the resumed run makes exactly the rest."""
    import json

    seeds = tmp_path / "rows.jsonl"
    seeds.write_text("".join(json.dumps({"text": f"review number {n}", "label": n % 2}) + "\n" for n in range(3000)))
    spec_text = (f"seeds: {{paths: [{seeds}], format: rows}}\n"
                 "stages:\n  - type: template\n    answer_choices: [negative, positive]\n    templates:\n"
                 "      - {name: a, jinja: \"Positive? {{ text }} ||| {{ answer_choices[label | int] }}\"}\n"
                 "      - {name: b, jinja: \"Sentiment of: {{ text }} ||| {{ answer_choices[label | int] }}\"}\n"
                 "output: {dir: OUT, rows_per_shard: 500}\n")

    def spec(out):
        path = tmp_path / f"{out}.yaml"
        path.write_text(spec_text.replace("OUT", str(tmp_path / out)))
        return load_spec(path)

    run_stopped_by_ctrl_c_after_shard(spec("stopped"))
    stopped = ds.dataset(tmp_path / "stopped" / "data", format="parquet").to_table(columns=["id"])["id"].to_pylist()
    assert 1000 <= len(stopped) < 3000
    run(spec("stopped"), progress=False, report=False)
    run(spec("whole"), progress=False, report=False)
    ids = {name: ds.dataset(tmp_path / name / "data", format="parquet").to_table(columns=["id"])["id"].to_pylist()
           for name in ("stopped", "whole")}
    assert len(ids["stopped"]) == len(set(ids["stopped"])) == 3000 and set(ids["stopped"]) == set(ids["whole"])
