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
    (tmp_path / "seeds.jsonl").write_text('{"instruction": "Go."}\n{"instruction": "Stop."}\n')
    ok = subprocess.run([sys.executable, "-m", "gen.cli", "validate", str(write(tmp_path, GOOD))],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "ok (1 stage(s), 0 filter(s), 2 seed record(s))" in ok.stdout


@pytest.mark.parametrize("command", ["validate", "run"])
def test_an_empty_seed_file_stops_validate_and_run_naming_it_before_any_engine(tmp_path, command):
    (tmp_path / "seeds.jsonl").write_text("")
    result = subprocess.run([sys.executable, "-m", "gen.cli", command, str(write(tmp_path, GOOD)),
                             "--set", f"output.dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"{tmp_path / 'seeds.jsonl'}: no seed records in the file" in result.stderr
    assert "Traceback" not in result.stderr and "vLLM" not in result.stderr


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


# ---------------------------------------------------------------- bad input caught when the spec is read


def refused(tmp_path, text, overrides=(), name="spec.yaml") -> str:
    """The message of the SpecError that loading ``text`` raises."""
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, text, name), list(overrides))
    return str(err.value)


SELF_INSTRUCT = GOOD.replace("  - type: respond", "  - type: self_instruct\n    target: 2")
WITH_FILTER = GOOD + "filters:\n  - {filter}\n"


@pytest.mark.parametrize("stage, field, problem", [
    ("self_instruct\n    rouge_threshold: 1", "stages.0.rouge_threshold", "less than 1"),
    ("self_instruct\n    rouge_threshold: -0.1", "stages.0.rouge_threshold", "greater than 0"),
    ("self_instruct\n    prompt_instructions: 3\n    machine_instructions_per_prompt: 3",
     "stages.0", "at least one seed"),
])
def test_stage_settings_out_of_range_are_refused(tmp_path, stage, field, problem):
    message = refused(tmp_path, GOOD.replace("  - type: respond", f"  - type: {stage}"))
    assert f"{field}: " in message and problem in message


@pytest.mark.parametrize("sampling, problem", [
    ("presence_penalty: 3", "less than or equal to 2"),
    ("frequency_penalty: -2.5", "greater than or equal to -2"),
    ("temperature: 2.5", "less than or equal to 2"),
    ("top_k: -2", "greater than or equal to -1"),
    ("{min_tokens: 10, max_tokens: 5}", "min_tokens (10) must not exceed max_tokens (5)"),
])
def test_sampling_that_vllm_would_refuse_per_request_is_refused_up_front(tmp_path, sampling, problem):
    text = GOOD.replace("  - type: respond", f"  - type: respond\n    sampling: {sampling}"
                        if sampling.startswith("{") else f"  - type: respond\n    sampling:\n      {sampling}")
    assert problem in refused(tmp_path, text)


@pytest.mark.parametrize("filter_, problem", [
    ("{type: dedup, bands: 0}", "stages" and "filters.0.bands: Input should be greater than or equal to 1"),
    ("{type: dedup, index_shards: 0}", "filters.0.index_shards: Input should be greater than or equal to 1"),
    ("{type: dedup, num_perm: 0}", "filters.0.num_perm: Input should be greater than or equal to 1"),
    ("{type: dedup, ngram: 0}", "filters.0.ngram: Input should be greater than or equal to 1"),
    ("{type: dedup, ids_per_bucket: 0}", "filters.0.ids_per_bucket: Input should be greater than or equal to 1"),
    ("{type: dedup, threshold: -0.5}", "filters.0.threshold: Input should be greater than 0"),
    ("{type: dedup, threshold: 1.5}", "filters.0.threshold: Input should be less than or equal to 1"),
    ("{type: language_id, min_score: -1}", "filters.0.min_score: Input should be greater than or equal to 0"),
    ("{type: language_id, min_score: 1.2}", "filters.0.min_score: Input should be less than or equal to 1"),
    ("{type: language_id, max_chars: 0}", "filters.0.max_chars: Input should be greater than or equal to 1"),
    ("{type: language_id, allowed: []}", "filters.0.allowed: List should have at least 1 item"),
    ("{type: instruction_rules, min_words: 10, max_words: 5}", "min_words (10) must not exceed max_words (5)"),
    ("{type: refusal, refusal_max_words: -1}", "filters.0.refusal_max_words: Input should be greater than or equal to 0"),
    ("{type: gopher_repetition, dup_line_frac: -0.1}", "filters.0.dup_line_frac: Input should be greater than or equal to 0"),
    ("{type: gopher_repetition, top_ngram_char_frac: {0: 0.2}}", "filters.0.top_ngram_char_frac.0.[key]: Input should be greater than or equal to 1"),
    ("{type: gopher_quality, min_alpha_word_frac: 2}", "filters.0.min_alpha_word_frac: Input should be less than or equal to 1"),
    ("{type: gopher_quality, min_mean_word_length: 12}", "min_mean_word_length (12.0) must not exceed max_mean_word_length (10.0)"),
    ("{type: decontamination, benchmarks: [], ngram: 13}", "filters.0.benchmarks: List should have at least 1 item"),
    ("{type: decontamination, benchmarks: [{path: b.jsonl, column: q}], ngram: 0}", "filters.0.ngram: Input should be greater than or equal to 1"),
])
def test_filter_thresholds_out_of_range_are_refused_with_the_field(tmp_path, filter_, problem):
    (tmp_path / "b.jsonl").write_text('{"q": "What is the capital of France?"}\n')
    message = refused(tmp_path, WITH_FILTER.format(filter=filter_))
    assert problem in message, message
    assert "Traceback" not in message


def test_files_the_spec_names_must_exist_when_it_is_read(tmp_path):
    message = refused(tmp_path, WITH_FILTER.format(filter="{type: decontamination, benchmarks: [{path: gone.jsonl, column: q}]}"))
    assert "filters.0.benchmarks.0.path: Value error, no such file" in message and str(tmp_path / "gone.jsonl") in message
    (tmp_path / "b.txt").write_text("x")
    assert "benchmark files are .jsonl, .json or .parquet" in refused(
        tmp_path, WITH_FILTER.format(filter="{type: decontamination, benchmarks: [{path: b.txt, column: q}]}"))
    message = refused(tmp_path, WITH_FILTER.format(filter="{type: dedup, against: [" + str(tmp_path / "old_run") + "]}"))
    assert f"filters.0.against: Value error, against.0: no kept shards in {tmp_path / 'old_run' / 'data'}" in message
    message = refused(tmp_path, WITH_FILTER.format(filter="{type: language_id, model_path: " + str(tmp_path / "lid.bin") + "}"))
    assert "filters.0.model_path: Value error, no such file" in message
    message = refused(tmp_path, GOOD.replace("name: sdg/tiny-random-chat", f"name: {tmp_path}/models/llama"))
    assert f"model.name: Value error, no such local model directory {tmp_path}/models/llama" in message
    load_spec(write(tmp_path, GOOD.replace("name: sdg/tiny-random-chat", "name: Qwen/Qwen2.5-7B-Instruct")))


def test_set_on_a_missing_list_item_or_into_a_scalar_names_the_problem(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(SpecError, match=r"--set 'stages\.5\.target=1': stages has 1 item\(s\)"):
        load_spec(path, ["stages.5.target=1"])
    with pytest.raises(SpecError, match=r"--set 'model\.name\.x=1': model\.name is not a section"):
        load_spec(path, ["model.name.x=1"])


def test_a_source_stage_after_the_first_is_refused(tmp_path):
    message = refused(tmp_path, GOOD.replace("  - type: respond", "  - type: respond\n  - type: self_instruct"))
    assert "stages.1: self_instruct makes its own work items and must be the first stage" in message
    message = refused(tmp_path, GOOD.replace("  - type: respond", "  - type: respond\n  - type: magpie"))
    assert "stages.1: magpie makes its own work items and must be the first stage" in message


@pytest.mark.parametrize("template, problem", [
    ("Rewrite: {{ instrucion }}", "uses undefined variable(s) instrucion (evol_in_breadth is given: instruction, op)"),
    ("Rewrite: {{ instruction ", "line 1: unexpected end of template"),
    ("{% if op == 'x' %}{{ missing }}{% endif %}{{ instruction }}", "undefined variable(s) missing"),
    ("{{ instruction | nosuchfilter }}", "No filter named 'nosuchfilter'"),
])
def test_prompt_overrides_that_cannot_render_are_refused(tmp_path, template, problem):
    (tmp_path / "mine.j2").write_text(template)
    message = refused(tmp_path, GOOD + "prompts:\n  evol_in_breadth: mine.j2\n")
    assert f"prompts: Value error, evol_in_breadth: {tmp_path / 'mine.j2'}: " in message and problem in message, message


def test_every_shipped_prompt_renders_with_its_stages_sample_variables(tmp_path):
    from gen.prompts import PROMPTS_DIR
    for shipped in sorted(PROMPTS_DIR.glob("*.j2")):
        load_spec(write(tmp_path, GOOD + f"prompts:\n  {shipped.stem}: {shipped}\n"))


def test_the_same_spec_from_another_directory_or_by_absolute_path_has_one_identity(tmp_path, monkeypatch):
    (tmp_path / "project" / "data").mkdir(parents=True)
    (tmp_path / "project" / "data" / "seeds.jsonl").write_text('{"instruction": "Go."}\n')
    (tmp_path / "project" / "mine.j2").write_text("{{ instruction }} {{ op }}")
    spec_text = GOOD.replace("seeds.jsonl", "data/seeds.jsonl") + "prompts:\n  evol_in_depth: mine.j2\n"
    write(tmp_path / "project", spec_text)
    monkeypatch.chdir(tmp_path)
    relative = load_spec("project/spec.yaml").identity()
    monkeypatch.chdir(tmp_path / "project")
    assert load_spec("spec.yaml").identity() == relative
    assert load_spec(tmp_path / "project" / "spec.yaml").identity() == relative
    # a copy of the project elsewhere, same contents: the same inputs, the same records
    import shutil
    shutil.copytree(tmp_path / "project", tmp_path / "copy")
    assert load_spec(tmp_path / "copy" / "spec.yaml").identity() == relative
    # really different inputs are a different identity
    (tmp_path / "copy" / "data" / "seeds.jsonl").write_text('{"instruction": "Stop."}\n')
    assert load_spec(tmp_path / "copy" / "spec.yaml").identity()["seeds"] != relative["seeds"]
    (tmp_path / "project" / "mine.j2").write_text("{{ op }}: {{ instruction }}")
    assert load_spec(tmp_path / "project" / "spec.yaml").identity()["prompts"] != relative["prompts"]


def test_a_run_dir_takes_the_same_spec_from_anywhere_and_refuses_a_changed_seed_file(tmp_path, monkeypatch):
    from gen.sink import OutputError, ShardSink

    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "seeds.jsonl").write_text('{"instruction": "Go."}\n')
    write(tmp_path / "project", GOOD)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    for spec_path in ("project/spec.yaml", tmp_path / "project" / "spec.yaml"):
        ShardSink.open(out, load_spec(spec_path).identity(), "zstd").close()
    (tmp_path / "project" / "seeds.jsonl").write_text('{"instruction": "Stop."}\n')
    with pytest.raises(OutputError, match=r"different spec \(changed: seeds.paths\)"):
        ShardSink.open(out, load_spec("project/spec.yaml").identity(), "zstd")


def test_the_card_and_failures_sections_are_not_part_of_a_runs_identity(tmp_path):
    (tmp_path / "seeds.jsonl").write_text('{"instruction": "Go."}\n')
    spec = write(tmp_path, GOOD)
    plain = load_spec(spec).identity()
    assert load_spec(spec, ["card.license=apache-2.0", "card.language=[fr]", "failures.request_attempts=9"]
                     ).identity() == plain
    assert load_spec(spec, ["sampling.max_tokens=33"]).identity() != plain  # what changes records does count


TWO_MODELS = """\
seeds:
  paths: [seeds.jsonl]
models:
  - name: sdg/smollm2-135m-instruct
    replicas: 2
  - name: sdg/tiny-random-chat
    sampling: {temperature: 0}
sampling:
  temperature: 0.7
stages:
  - type: respond
  - type: judge
    model: sdg/tiny-random-chat
filters:
  - type: score
output:
  dir: out
"""


def test_several_models_each_stage_on_the_one_it_names_by_default_the_first(tmp_path):
    spec = load_spec(write(tmp_path, TWO_MODELS))
    assert [m.name for m in spec.engines] == ["sdg/smollm2-135m-instruct", "sdg/tiny-random-chat"]
    assert spec.model_of(spec.stages[0]).name == "sdg/smollm2-135m-instruct"
    assert spec.model_of(spec.stages[1]).name == "sdg/tiny-random-chat"
    # The one-model shorthand is the same thing with one engine.
    one = load_spec(write(tmp_path, GOOD))
    assert [m.name for m in one.engines] == ["sdg/tiny-random-chat"] and one.model_of(one.stages[0]) is one.model
    # Replicas are placement, not identity: the same run with more replicas resumes the same dir.
    (tmp_path / "seeds.jsonl").write_text('{"instruction": "Say hi."}\n')
    assert load_spec(write(tmp_path, TWO_MODELS.replace("replicas: 2", "replicas: 1"))).identity() == spec.identity()


def test_a_stage_naming_an_unknown_model_is_refused_naming_the_field(tmp_path):
    path = write(tmp_path, TWO_MODELS.replace("model: sdg/tiny-random-chat", "model: sdg/tiny-chat"))
    with pytest.raises(SpecError, match=r"stages\.1\.model: no engine named 'sdg/tiny-chat' \(models: "
                                        r"sdg/smollm2-135m-instruct, sdg/tiny-random-chat\)"):
        load_spec(path)
    both = GOOD.replace("stages:", "models: [{name: sdg/tiny-random-chat}]\nstages:")
    with pytest.raises(SpecError, match="set model .one engine. or models .several., not both"):
        load_spec(write(tmp_path, both))
    twice = TWO_MODELS.replace("sdg/smollm2-135m-instruct\n", "sdg/tiny-random-chat\n")
    with pytest.raises(SpecError, match="models: each name once"):
        load_spec(write(tmp_path, twice))


def test_a_score_filter_must_ask_for_scores_a_judge_makes(tmp_path):
    path = write(tmp_path, TWO_MODELS.replace("  - type: score", "  - type: score\n    at_least: {helpfulness: 4}"))
    with pytest.raises(SpecError, match=r"filters\.0\.at_least: no stage scores helpfulness \(scored: accuracy\)"):
        load_spec(path)
    ultra = TWO_MODELS.replace("model: sdg/tiny-random-chat\n", "model: sdg/tiny-random-chat\n    rubric: ultrafeedback\n")
    assert load_spec(write(tmp_path, ultra.replace("  - type: score", "  - type: score\n    at_least: {helpfulness: 4}")))
    no_judge = GOOD.replace("stages:", "filters: [{type: score}]\nstages:")
    with pytest.raises(SpecError, match="no stage scores accuracy .scored: nothing: add a judge stage"):
        load_spec(write(tmp_path, no_judge))


@pytest.mark.parametrize("structured, problem", [
    ({"choice": ["yes"], "regex": "y"}, "exactly one of json, regex, choice, grammar, json_object, structural_tag "
                                        r"\(got regex, choice\)"),
    ({}, r"\(got none\)"),
    ({"json": "{not json"}, "json: not a JSON schema"),
    ({"choice": []}, r"structured_outputs\.choice: List should have at least 1 item"),
    ({"guided_choice": ["a"]}, r"structured_outputs\.guided_choice: Extra inputs are not permitted"),
])
def test_structured_outputs_take_vllms_names_and_exactly_one_constraint(tmp_path, structured, problem):
    path = write(tmp_path, GOOD.replace("  max_tokens: 32", f"  max_tokens: 32\n  structured_outputs: {json.dumps(structured)}"))
    with pytest.raises(SpecError, match=problem):
        load_spec(path)


def test_structured_outputs_reach_the_sampling_params_under_vllms_names(tmp_path):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    path = write(tmp_path, GOOD.replace("  max_tokens: 32", f"  max_tokens: 32\n  structured_outputs: {{json: {json.dumps(schema)}}}"))
    assert load_spec(path).sampling.params()["structured_outputs"] == {"json": schema}
    stage = GOOD.replace("  - type: respond", "  - type: respond\n    sampling: {structured_outputs: {choice: ['yes', 'no']}}")
    assert load_spec(write(tmp_path, stage)).stages[0].sampling.params() == {"structured_outputs": {"choice": ["yes", "no"]}}


def test_pairs_needs_a_judge_before_it(tmp_path):
    path = write(tmp_path, GOOD.replace("  - type: respond", "  - type: respond\n  - type: pairs"))
    with pytest.raises(SpecError, match=r"stages\.1: pairs compares scored answers: put a judge stage before it"):
        load_spec(path)
    judged = GOOD.replace("  - type: respond", "  - type: respond\n    sampling: {n: 4}\n  - type: judge\n  - type: pairs")
    assert [c.type for c in load_spec(write(tmp_path, judged)).stages] == ["respond", "judge", "pairs"]


def test_only_engines_a_stage_uses_start_and_each_stage_gets_its_engines_sampling_defaults(tmp_path):
    from gen.run import _stage_context, used_engines

    spec = load_spec(write(tmp_path, TWO_MODELS))
    pools = {"sdg/smollm2-135m-instruct": "generator pool", "sdg/tiny-random-chat": "judge pool"}
    generate, judge = (_stage_context(spec, config, pools) for config in spec.stages)
    assert (generate.engine, generate.model) == ("generator pool", "sdg/smollm2-135m-instruct")
    assert (judge.engine, judge.model) == ("judge pool", "sdg/tiny-random-chat")
    # The engine's sampling defaults sit over the spec's: the judge's engine samples greedily.
    assert generate.sampling.temperature == 0.7 and judge.sampling.temperature == 0
    assert [m.name for m in used_engines(spec)] == list(pools)
    # An engine no stage names is not started.
    alone = load_spec(write(tmp_path, TWO_MODELS.replace("    model: sdg/tiny-random-chat\n", "")))
    assert [m.name for m in used_engines(alone)] == ["sdg/smollm2-135m-instruct"]
