import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gen.seeds import SeedError, SeedReader
from tests.conftest import REPO, SHARED_DATA


def read(paths, **kw):
    reader = SeedReader([str(p) for p in paths], **kw)
    return reader, list(reader)


def test_formats_are_recognised_without_being_told(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"id": "t1", "instruction": "Sort the words.", "is_classification": False,
         "instances": [{"input": "b a", "output": "a b"}, {"input": "d c", "output": "c d"}]},
        {"instruction": "Name a colour.", "input": "", "output": "Red."},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"prompt": "Is 7 prime?\n", "completion": "yes"},
        {"instruction": "Say nothing yet."},
    ]) + "\n")
    reader, records = read([path])
    assert [[m["content"] for m in r["messages"]] for r in records] == [
        ["Sort the words.\n\nb a", "a b"], ["Sort the words.\n\nd c", "c d"], ["Name a colour.", "Red."],
        ["Hi", "Hello"], ["Is 7 prime?\n", "yes"], ["Say nothing yet."]]
    assert records[0]["seed_id"] == "t1" and records[0]["metadata"]["seed_input"] == "b a"
    assert records[0]["metadata"]["seed_source"] == f"{path}:1"
    assert len({r["work_key"] for r in records}) == 6 and reader.skipped == 0


def test_identical_seeds_stay_distinct_and_ids_are_stable_across_reads(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text('{"instruction": "Same."}\n{"instruction": "Same."}\n')
    first = [r["id"] for r in read([path])[1]]
    assert len(set(first)) == 2 and first == [r["id"] for r in read([path])[1]]


def test_json_array_parquet_and_csv_rows(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "One."}, {"instruction": "Two."}]))
    pq.write_table(pa.table({"instruction": ["Three."], "input": [""], "output": ["3"]}), tmp_path / "b.parquet")
    (tmp_path / "c.csv").write_text("text,label\ngood film,positive\n")
    _, records = read([tmp_path / "a.json", tmp_path / "b.parquet"])
    assert [[m["content"] for m in r["messages"]] for r in records] == [["One."], ["Two."], ["Three.", "3"]]
    _, rows = read([tmp_path / "c.csv"], format="rows")
    assert rows[0]["metadata"]["row"] == {"text": "good film", "label": "positive"}
    assert rows[0]["messages"] == []


def test_globs_expand_and_a_pattern_with_no_match_is_an_error(tmp_path):
    for name in ("x1.jsonl", "x2.jsonl"):
        (tmp_path / name).write_text('{"instruction": "Go."}\n')
    assert len(read([tmp_path / "x*.jsonl"])[1]) == 2
    with pytest.raises(SeedError, match=r"seeds.paths\[0\]: no file matches"):
        read([tmp_path / "nothing*.jsonl"])


BAD_LINES = [
    ('{"instruction": "ok"}', None),
    ('{"instruction": ', "not valid JSON"),
    ('["a list"]', "expected an object, got list"),
    ('{"text": "x"}', "not a recognised seed record (keys: text)"),
    ('{"instruction": ""}', "'instruction' must be a non-empty string"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', "messages[0].role must be system, user or assistant"),
]


def test_malformed_line_fails_with_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    for number, (line, problem) in enumerate(BAD_LINES[1:], start=2):
        path.write_text(BAD_LINES[0][0] + "\n" + line + "\n")
        with pytest.raises(SeedError) as err:
            read([path])
        assert str(err.value).startswith(f"{path}:2: {problem}")


def test_skip_mode_counts_and_reports_every_bad_line_and_keeps_the_good(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(("\n".join(line for line, _ in BAD_LINES) + "\n").encode() + b'{"instruction": "caf\xe9"}\n')
    reader, records = read([path], on_error="skip")
    assert len(records) == 1 and reader.skipped == len(BAD_LINES)
    assert [p.where for p in reader.problems] == [f"{path}:{n}" for n in range(2, len(BAD_LINES) + 2)]
    assert "not valid UTF-8" in reader.problems[-1].what


def test_limit(tmp_path):
    assert len(read([REPO / "examples" / "seeds.jsonl"], limit=5)[1]) == 5


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is not beside the project")
def test_real_self_instruct_seed_tasks_load():
    reader, records = read([SHARED_DATA / "self_instruct_seed_tasks.jsonl"])
    assert reader.skipped == 0
    assert len({r["seed_id"] for r in records}) == 175
    assert any(r["metadata"]["is_classification"] for r in records)
