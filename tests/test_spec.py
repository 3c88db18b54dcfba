import json
import subprocess
import sys

import pytest

from gen.spec import SpecError, json_schema, load_spec

GOOD = """\
seeds:
  paths: [seeds.jsonl]
model:
  name: sdg/tiny-random-chat
sampling:
  temperature: 0.7
  max_tokens: 32
stages:
  - type: respond
output:
  dir: out
"""


def write(tmp_path, text, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_spec_resolves_seed_paths_against_the_spec_file(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    assert spec.seeds.paths == [str(tmp_path / "seeds.jsonl")]
    assert spec.sampling.params() == {"temperature": 0.7, "max_tokens": 32}
    assert spec.model.replicas == 1


def test_unknown_key_is_refused_with_file_line_and_field_path(tmp_path):
    path = write(tmp_path, GOOD.replace("  max_tokens: 32", "  max_tokens: 32\n  temprature: 1"))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert f"{path}:8: sampling.temprature: Extra inputs are not permitted" in str(err.value)


def test_stage_field_errors_name_the_stage_index_not_the_union_tag(tmp_path):
    path = write(tmp_path, GOOD.replace("  - type: respond", "  - type: respond\n    bogus: 1"))
    with pytest.raises(SpecError, match=r"spec.yaml:10: stages\.0\.bogus: Extra inputs"):
        load_spec(path)


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    path = write(tmp_path, GOOD)
    spec = load_spec(path, ["model.replicas=2", "sampling.stop=['###']", "stages.0.type=respond"])
    assert spec.model.replicas == 2 and spec.sampling.stop == ["###"]
    with pytest.raises(SpecError, match=r"model\.replicas: Input should be a valid integer"):
        load_spec(path, ["model.replicas=two"])
    with pytest.raises(SpecError, match="expected FIELD.PATH=VALUE"):
        load_spec(path, ["model.replicas"])


def test_engine_args_cannot_set_what_the_model_section_owns(tmp_path):
    path = write(tmp_path, GOOD.replace("  name: sdg/tiny-random-chat",
                                        "  name: sdg/tiny-random-chat\n  engine_args: {dtype: half}"))
    with pytest.raises(SpecError, match="set dtype in the model section"):
        load_spec(path)


def test_missing_file_and_bad_yaml_name_the_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(write(tmp_path, "seeds: [unclosed"))


def test_json_schema_lists_every_stage_and_filter_type():
    text = json.dumps(json_schema())
    assert all(f'"{name}"' in text for name in ("respond", "dedup", "language_id"))


def test_cli_validate_reports_errors_without_a_traceback(tmp_path):
    path = write(tmp_path, GOOD.replace("dir: out", "dir: out\n  rows_per_shard: 0"))
    result = subprocess.run([sys.executable, "-m", "gen.cli", "validate", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "output.rows_per_shard: Input should be greater than or equal to 1" in result.stderr
    assert "Traceback" not in result.stderr
    ok = subprocess.run([sys.executable, "-m", "gen.cli", "validate", str(write(tmp_path, GOOD))],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "ok (1 stage(s), 0 filter(s))" in ok.stdout


def test_prompt_overrides_resolve_against_the_spec_file_and_must_exist(tmp_path):
    (tmp_path / "mine.j2").write_text("Answer: {{ instruction }}")
    spec = load_spec(write(tmp_path, GOOD + "prompts:\n  evol_in_breadth: mine.j2\n"))
    assert spec.prompts == {"evol_in_breadth": str(tmp_path / "mine.j2")}
    with pytest.raises(SpecError, match="prompts: Value error, no shipped prompt named nope"):
        load_spec(write(tmp_path, GOOD + "prompts:\n  nope: mine.j2\n"))
    with pytest.raises(SpecError, match="evol_in_breadth: no such file"):
        load_spec(write(tmp_path, GOOD + "prompts:\n  evol_in_breadth: missing.j2\n"))


def test_seeds_are_required_unless_the_first_stage_makes_its_own_work(tmp_path):
    no_seeds = GOOD.replace("seeds:\n  paths: [seeds.jsonl]\n", "")
    with pytest.raises(SpecError, match="seeds: required"):
        load_spec(write(tmp_path, no_seeds))
    spec = load_spec(write(tmp_path, no_seeds.replace("  - type: respond", "  - type: magpie\n    target: 3")))
    assert spec.seeds is None
