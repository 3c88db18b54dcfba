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


def test_the_reader_counts_the_records_it_gave_out_for_the_manifest(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text('{"instruction": "a"}\nnot json\n{"instruction": "b"}\n{"instruction": "c"}\n')
    reader, records = read([path], on_error="skip")
    assert (reader.read, reader.skipped, len(records)) == (3, 1, 3)
    stream = iter(reader)
    next(stream)
    assert reader.read == 1  # a stream: counted as it goes, from zero again on each reading


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is not beside the project")
def test_real_self_instruct_seed_tasks_load():
    reader, records = read([SHARED_DATA / "self_instruct_seed_tasks.jsonl"])
    assert reader.skipped == 0
    assert len({r["seed_id"] for r in records}) == 175
    assert any(r["metadata"]["is_classification"] for r in records)


# ---------------------------------------------------------------- bad seed files


def test_a_ragged_csv_row_is_a_problem_of_its_line(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('text,label\ngood film,1\n"two\nlines",0\ntoo,many,fields\ntoo few\nbad film,0\n')
    with pytest.raises(SeedError, match=rf"^{path}:5: has 3 fields, the header has 2"):
        read([path], format="rows")
    reader, rows = read([path], format="rows", on_error="skip")
    assert [r["metadata"]["row"]["text"] for r in rows] == ["good film", "two\nlines", "bad film"]
    assert [(p.where, p.what) for p in reader.problems] == [
        (f"{path}:5", "has 3 fields, the header has 2"), (f"{path}:6", "has 1 field, the header has 2")]


def test_a_latin1_csv_is_not_silently_mangled(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\nplain,0\ncaf\u00e9 cr\u00e8me,1\n".encode("latin-1"))
    with pytest.raises(SeedError, match=rf"^{path}:3: not valid UTF-8 \(byte 3\)"):
        read([path], format="rows")
    reader, rows = read([path], format="rows", on_error="skip")
    assert [r["metadata"]["row"]["text"] for r in rows] == ["plain"] and reader.skipped == 1


def test_a_corrupt_parquet_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "broken.parquet"
    pq.write_table(pa.table({"instruction": ["One."] * 100}), path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(SeedError, match=rf"^{path}: not a readable Parquet file"):
        read([path])


def test_an_escaped_lone_surrogate_is_a_problem_of_its_line_not_a_failed_commit(tmp_path):
    from gen.records import to_table

    path = tmp_path / "surrogate.jsonl"
    path.write_text('{"instruction": "fine"}\n{"instruction": "bad \\ud800 half"}\n')
    with pytest.raises(SeedError, match=rf"^{path}:2: .*unpaired surrogate"):
        read([path])
    reader, records = read([path], on_error="skip")
    assert len(records) == 1 and reader.problems[0].where == f"{path}:2"
    to_table(records)  # what the commit writes
    array = tmp_path / "surrogate.json"
    array.write_text('[{"instruction": "fine"}, {"instruction": "\\udc00"}]')
    with pytest.raises(SeedError, match=rf"^{array}:\[1\]: .*unpaired surrogate"):
        read([array])


def test_parquet_rows_with_dates_and_decimals_become_json_safe_and_binary_is_refused(tmp_path):
    import datetime
    import decimal

    from gen.records import to_table

    path = tmp_path / "typed.parquet"
    pq.write_table(pa.table({
        "text": ["on time"], "day": [datetime.date(2024, 2, 29)],
        "at": [datetime.datetime(2024, 2, 29, 12, 30, tzinfo=datetime.UTC)],
        "price": pa.array([decimal.Decimal("12.50")], pa.decimal128(6, 2)),
        "tags": [["a", "b"]],
    }), path)
    _, rows = read([path], format="rows")
    assert rows[0]["metadata"]["row"] == {"text": "on time", "day": "2024-02-29", "at": "2024-02-29T12:30:00+00:00",
                                          "price": "12.50", "tags": ["a", "b"]}
    to_table(rows)  # every commit failed on these before
    binary = tmp_path / "binary.parquet"
    pq.write_table(pa.table({"text": ["x"], "image": [b"\x89PNG"]}), binary)
    with pytest.raises(SeedError, match=rf"^{binary}: column 'image' is binary"):
        read([binary], format="rows")


def test_an_empty_seed_file_or_one_with_no_usable_record_is_an_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(SeedError, match=rf"^{empty}: no seed records in the file"):
        read([empty])
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,label\n")
    with pytest.raises(SeedError, match=rf"^{header_only}: no seed records in the file"):
        read([header_only], format="rows")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n{"text": "y"}\n')
    with pytest.raises(SeedError, match=r"no usable seed record: all 2 were skipped \(first: .*bad.jsonl:1: "):
        read([bad], on_error="skip")


# ---------------------------------------------------------------- the count behind the progress total


def test_the_count_of_a_jsonl_file_is_its_non_blank_lines_and_matches_its_records(tmp_path):
    path = tmp_path / "seeds.jsonl"
    # blank and whitespace-only lines, CRLF line ends, no line end after the last line
    path.write_bytes(b'{"instruction": "a"}\r\n\n   \n{"instruction": "b"}\n\t\r\n{"instruction": "c"}')
    reader, records = read([path])
    assert reader.count_rows() == len(records) == 3
    (tmp_path / "bad.jsonl").write_text('{"instruction": "a"}\nnot json\n')
    reader, records = read([tmp_path / "bad.jsonl"], on_error="skip")
    assert (reader.count_rows(), len(records)) == (2, 1)  # a malformed line counts: an upper bound


def test_the_count_of_a_jsonl_file_spans_its_blocks(tmp_path):
    path = tmp_path / "many.jsonl"  # 3 MB: read in 1 MiB blocks, lines cut across them
    path.write_text("".join(f'{{"instruction": "task {i}"}}\n' + "\n" * (i % 3) for i in range(100_000)))
    assert SeedReader([str(path)]).count_rows() == 100_000


def test_the_count_of_csv_json_and_parquet_files(tmp_path):
    (tmp_path / "rows.csv").write_text("text,label\n\ngood film,1\nbad film,0\n")
    (tmp_path / "array.json").write_text(json.dumps([{"instruction": f"T{i}."} for i in range(4)]))
    pq.write_table(pa.table({"instruction": [f"P{i}." for i in range(5000)]}), tmp_path / "p.parquet",
                   row_group_size=1000)
    for name, count, kw in [("rows.csv", 2, {"format": "rows"}), ("array.json", 4, {}), ("p.parquet", 5000, {})]:
        reader, records = read([tmp_path / name], **kw)
        assert reader.count_rows() == len(records) == count, name
    multi_line = tmp_path / "quoted.csv"
    multi_line.write_text('text,label\n"two\nlines",0\n')
    reader, rows = read([multi_line], format="rows")
    assert (reader.count_rows(), len(rows)) == (2, 1)  # a quoted field spanning lines: an upper bound


def test_a_parquet_file_is_counted_from_its_metadata_without_reading_a_row(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"instruction": [f"Task number {i}." for i in range(1000)]}), path)
    data = bytearray(path.read_bytes())
    data[4:len(data) // 2] = b"\0" * (len(data) // 2 - 4)  # the column data, not the footer
    path.write_bytes(bytes(data))
    reader = SeedReader([str(path)])
    assert reader.count_rows() == 1000
    with pytest.raises(SeedError, match="not a readable Parquet file"):
        list(reader)


def test_the_count_is_summed_over_files_and_capped_by_limit(tmp_path):
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_text('{"instruction": "x"}\n{"instruction": "y"}\n{"instruction": "z"}\n')
    assert SeedReader([str(tmp_path / "*.jsonl")]).count_rows() == 6
    assert SeedReader([str(tmp_path / "*.jsonl")], limit=4).count_rows() == 4
    assert SeedReader([str(tmp_path / "*.jsonl")], limit=10).count_rows() == 6
    reader, records = read([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], limit=4)
    assert reader.count_rows() == len(records) == 4
