"""The run spec: a YAML file read into a pydantic model.

Unknown keys are refused, and every error names the file, the field path and, where the YAML has
it, the line. Any field can be overridden from the command line with ``--set a.b=value`` (the value
is parsed as YAML, so ``--set model.replicas=2`` gives an int).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import xxhash
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from filters import FilterSpec
from filters.score import ScoreConfig
from gen.prompts import check_renders
from gen.sampling import Sampling
from gen.seeds import SeedReader
from gen.storage import is_uri
from gen.smollm2_model import NAME as EMBEDDED_DEFAULT_MODEL
from gen.stages import STAGES, SourceStage, StageConfig, StageSpec


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeedsSpec(_Section):
    paths: list[str] = Field(min_length=1)
    """Files or globs (JSONL, JSON arrays, Parquet, CSV), relative to the spec file."""
    format: Literal["auto", "self_instruct", "alpaca", "messages", "prompt_completion", "rows"] = "auto"
    """``auto`` recognises Self-Instruct, Alpaca, ``messages`` and ``prompt``/``completion``
    records; ``rows`` passes labelled-dataset rows through untouched (for ``template``)."""
    on_error: Literal["fail", "skip"] = "fail"
    """``skip``: a malformed line is counted, reported and left out instead of stopping the run."""
    limit: int | None = Field(None, ge=1)
    """Read at most this many seed records (handy for trying a spec)."""


class ModelSpec(_Section):
    name: str = EMBEDDED_DEFAULT_MODEL
    """HF model id or local path; or an embedded model sdg builds offline (``gen/embedded_models.py``):
    ``sdg/smollm2-135m-instruct`` (real text) or ``sdg/tiny-random-chat`` (noise, for tests)."""
    dtype: str = "auto"
    max_model_len: int | None = Field(None, ge=16)
    tensor_parallel_size: int = Field(1, ge=1)
    replicas: int = Field(1, ge=1)
    num_cpus_per_replica: int | None = Field(None, ge=1)
    """On a Ray cluster without GPUs: the CPUs each replica reserves, which its engine computes on
    (as many threads). By default the most that every replica of the run can have at once: one
    replica on one machine takes all its cores. Set it when the cluster runs other work too."""
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    engine_args: dict[str, Any] = {}
    """Any other ``vllm.EngineArgs`` field, passed through as given."""
    max_in_flight_per_replica: int = Field(2048, ge=1)
    """Requests kept queued per replica: well above vLLM's ``max_num_seqs`` (256 on CPU, 1024 on
    H100/H200), so that when a batch finishes together the next one is already waiting."""
    sampling: Sampling | None = None
    """Sampling defaults of the stages on this engine: over the spec's ``sampling``, under a
    method's and a stage's own (a judge answers greedily while the generator samples)."""

    @field_validator("name")
    @classmethod
    def _local_model_exists(cls, name: str) -> str:
        # A Hugging Face repo id is NAME or ORG/NAME and never starts with "/", "." or "~"; any
        # other name is a local path, which must exist before an engine is started for it.
        local = name.startswith(("/", ".", "~")) or name.count("/") > 1
        if local and not Path(name).exists():
            raise ValueError(f"no such local model directory {name}")
        return name

    @field_validator("engine_args")
    @classmethod
    def _no_second_way(cls, value: dict[str, Any]) -> dict[str, Any]:
        owned = {"model", "dtype", "max_model_len", "tensor_parallel_size", "gpu_memory_utilization"}
        clash = sorted(owned & value.keys())
        if clash:
            raise ValueError(f"set {', '.join(clash)} in the model section, not in engine_args")
        return value


class OutputSpec(_Section):
    dir: str
    rows_per_shard: int = Field(10_000, ge=1)
    compression: Literal["zstd", "snappy", "gzip", "lz4", "brotli", "none"] = "zstd"
    commit_interval_s: float = Field(60.0, gt=0)
    """Commit a (smaller) shard at least this often, so a crash loses little work."""


class FailuresSpec(_Section):
    """How a run meets failures. None of it changes what a run makes (not part of its identity)."""

    request_attempts: int = Field(4, ge=1)
    """Replicas one engine request is tried on before the run stops (a lost replica is never a
    record's fault: its requests go to a healthy replica and nothing is rejected for it)."""
    replica_restarts: int = Field(10, ge=0)
    """Times Ray restarts each replica (a dead engine, an OOM, a lost node) over the run."""
    stall_timeout_s: float = Field(600.0, gt=0)
    """A replica that holds requests and finishes none for this long is hung: it is killed and
    restarted, its requests sent elsewhere. Well above the longest single generation."""
    startup_timeout_s: float = Field(1800.0, gt=0)
    """How long the engines may take to be placed and loaded (a large model, a busy cluster)."""
    max_stage_error_rate: float = Field(0.05, ge=0, le=1)
    """An unexpected error in a stage's code rejects that work item as ``stage_error``; once at
    least ``min_stage_errors`` happened and they exceed this share of finished work items, the
    bug is not one record's: the run stops."""
    min_stage_errors: int = Field(10, ge=1)
    grace_period_s: float = Field(30.0, ge=0)
    """On SIGINT/SIGTERM: how long work in flight may still finish before what is complete is
    committed and the run exits (a second signal skips the wait)."""


class FilterWorkersSpec(_Section):
    """How ``sdg filter`` spreads its stateless filters over the cluster (``filters/parallel.py``).
    None of it changes what a run makes (not part of its identity)."""

    concurrency: int | None = Field(None, ge=1)
    """Worker processes judging batches with the stateless filters, one CPU each: Ray Data's
    ``map_batches(concurrency=...)``. None: one per CPU of the cluster."""
    batch_size: int = Field(1000, ge=1)
    """Records a worker judges at a time (a block of the read stream, a ``map_batches`` batch)."""


class CardSpec(_Section):
    """The dataset card ``DIR/README.md`` (Hugging Face's format). None of it changes what a run
    makes (not part of its identity)."""

    license: str = "unknown"
    """A Hugging Face license id (``apache-2.0``, ``cc-by-4.0``, ``other``, ...). Mind the model's
    license and terms of use: they may bind what it generates."""
    language: list[str] | None = None
    """ISO 639-1 codes; by default the languages of the kept records (the language_id filter's, or
    detected with its model), those of at least 1% of them."""
    task_categories: list[str] = ["text-generation"]
    pretty_name: str | None = None


class Spec(_Section):
    seeds: SeedsSpec | None = None
    """Required unless the first stage makes its own work items from nothing (``magpie``)."""
    model: ModelSpec = ModelSpec()
    """The one engine of the run: shorthand for ``models: [...]`` with one entry."""
    models: list[ModelSpec] = []
    """Several engines in one run (a generator and a stronger judge): each loads its own replicas;
    a stage names the one it uses by ``name`` (``stages.N.model``), by default the first."""
    sampling: Sampling = Sampling()
    stages: list[StageSpec] = []
    """Empty: the seeds themselves go through the filters (what ``sdg filter`` does)."""
    filters: list[FilterSpec] = []
    prompts: dict[str, str] = {}
    """Prompt template overrides: name (a file of ``gen/prompts/`` without ``.j2``) -> a Jinja
    file, relative to the spec file."""
    output: OutputSpec
    failures: FailuresSpec = FailuresSpec()
    filter_workers: FilterWorkersSpec = FilterWorkersSpec()
    card: CardSpec = CardSpec()

    @model_validator(mode="after")
    def _seeds_when_needed(self) -> Spec:
        if self.seeds is None and (not self.stages or STAGES[type(self.stages[0])].needs_seeds):
            raise ValueError("seeds: required (only a first stage like magpie makes work from nothing)")
        return self

    @model_validator(mode="after")
    def _stages_name_known_models(self) -> Spec:
        if self.models and "model" in self.model_fields_set:
            raise ValueError("set model (one engine) or models (several), not both")
        names = [model.name for model in self.engines]
        if len(set(names)) < len(names):
            raise ValueError(f"models: each name once (got {', '.join(names)}); one engine serves every stage naming it")
        for index, config in enumerate(self.stages):
            if config.model is not None and config.model not in names:
                raise ValueError(f"stages.{index}.model: no engine named {config.model!r} "
                                 f"(models: {', '.join(names)})")
        return self

    @model_validator(mode="after")
    def _scores_a_stage_makes(self) -> Spec:
        made: set[str] = set()
        for index, config in enumerate(self.stages):
            if config.type == "pairs" and not made:
                raise ValueError(f"stages.{index}: pairs compares scored answers: put a judge stage before it")
            made.update(STAGES[type(config)].scores_made(config))
        for index, config in enumerate(self.filters):
            if isinstance(config, ScoreConfig) and (unknown := sorted(config.at_least.keys() - made)):
                raise ValueError(f"filters.{index}.at_least: no stage scores {', '.join(unknown)} "
                                 f"(scored: {', '.join(sorted(made)) or 'nothing: add a judge stage'})")
        return self

    @property
    def engines(self) -> list[ModelSpec]:
        """The run's engines, the first the default of every stage."""
        return self.models or [self.model]

    def model_of(self, config: StageConfig) -> ModelSpec:
        """The engine a stage runs on."""
        return next((m for m in self.engines if m.name == config.model), self.engines[0])

    @field_validator("stages")
    @classmethod
    def _sources_first(cls, stages: list[StageSpec]) -> list[StageSpec]:
        for index, config in enumerate(stages[1:], start=1):
            if issubclass(STAGES[type(config)], SourceStage):
                raise ValueError(f"stages.{index}: {config.type} makes its own work items and must be the first stage")
        return stages

    @field_validator("prompts")
    @classmethod
    def _known_prompts(cls, value: dict[str, str]) -> dict[str, str]:
        variables = {name: sample for stage in STAGES.values() for name, sample in stage.prompts.items()}
        unknown = sorted(set(value) - variables.keys())
        if unknown:
            raise ValueError(f"no shipped prompt named {', '.join(unknown)} (known: {', '.join(sorted(variables))})")
        for name, path in value.items():
            if not Path(path).is_file():
                raise ValueError(f"{name}: no such file {path}")
            try:
                check_renders(name, path, variables[name])
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return value

    def identity(self) -> dict[str, Any]:
        """What decides the records of a run: two runs into one output dir must agree on it.

        Input files count by content, not by path: their paths are made from the spec file's
        directory, so the same spec run from another directory, by its absolute path or from a
        copy of the project (what ``sdg submit`` runs) names them differently, and makes the same
        records. A changed input file is a changed identity, wherever it lives.
        """
        placement = {"replicas", "num_cpus_per_replica", "max_in_flight_per_replica"}
        identity = self.model_dump(mode="json", exclude={"output": {"dir", "commit_interval_s"},
                                                         "model": placement, "models": {"__all__": placement},
                                                         "failures": True, "filter_workers": True,
                                                         "card": True})
        for holder, key in input_path_slots(identity):
            holder[key] = _content_digest(holder[key])
        return identity


class SpecError(ValueError):
    """A spec that cannot be used, with a message that names the file, field and line."""


def load_spec(path: str | Path, overrides: list[str] = ()) -> Spec:
    """Read, override and validate a spec; raises :class:`SpecError` naming file, line and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the spec must be a mapping of sections, got {type(data).__name__}")
    for override in overrides:
        _apply_override(data, override, path)
    _resolve_paths(data, path.parent)
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_describe(exc, path, text)) from None


def _apply_override(data: dict, override: str, path: Path) -> None:
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise SpecError(f"--set {override!r}: expected FIELD.PATH=VALUE")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as exc:
        raise SpecError(f"--set {override!r}: the value is not valid YAML: {exc}") from None
    node: Any = data
    parts = key.split(".")
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth])
        if isinstance(node, list):
            if not part.isdigit():
                raise SpecError(f"--set {override!r}: {part!r} must be a list index ({where} is a list)")
            if int(part) >= len(node):
                raise SpecError(f"--set {override!r}: {where} has {len(node)} item(s)")
            part = int(part)
        elif not isinstance(node, dict):
            raise SpecError(f"--set {override!r}: {where} is not a section")
        elif node.get(part) is None and depth < len(parts) - 1:
            node[part] = {}  # a section left out, or written with nothing under it
        if depth == len(parts) - 1:
            node[part] = value
        else:
            node = node[part]


def input_path_slots(data: dict) -> list[tuple[dict | list, str | int]]:
    """Where a raw spec names input files (seeds, prompt overrides, decontamination benchmarks,
    filters' models), as (container, key) pairs. These are relative to the spec file; outputs are not."""
    slots: list[tuple[dict | list, str | int]] = []
    seeds = data.get("seeds")
    if isinstance(seeds, dict) and isinstance(seeds.get("paths"), list):
        slots += [(seeds["paths"], i) for i in range(len(seeds["paths"]))]
    if isinstance(data.get("prompts"), dict):
        slots += [(data["prompts"], name) for name in data["prompts"]]
    for f in data.get("filters") or []:
        if isinstance(f, dict) and isinstance(f.get("benchmarks"), list):
            slots += [(b, "path") for b in f["benchmarks"] if isinstance(b, dict) and "path" in b]
        if isinstance(f, dict) and "model_path" in f:
            slots.append((f, "model_path"))
    return [(holder, key) for holder, key in slots if isinstance(holder[key], str)]


def _content_digest(pattern: str) -> str:
    """One digest of the contents of the files a path or glob names, in the order they are read."""
    digest = xxhash.xxh3_128()
    for file in SeedReader([pattern]).files():  # expands globs as the seed reader does
        with file.fs.open_input_stream(file.path) as f:
            while block := f.read(1 << 20):
                digest.update(block)
        digest.update(b"\0file\0")  # a.jsonl + b.jsonl differs from one file of both
    return f"xxh3-128:{digest.hexdigest()}"


def _resolve_paths(data: dict, base: Path) -> None:
    """Input paths are relative to the spec file, so a spec runs from any directory (URIs are
    absolute)."""
    for holder, key in input_path_slots(data):
        if not is_uri(holder[key]) and not Path(holder[key]).is_absolute():
            holder[key] = str(base / holder[key])


def _describe(exc: ValidationError, path: Path, text: str) -> str:
    lines = [f"{path}: invalid spec ({exc.error_count()} problem(s))"]
    for error in exc.errors():
        loc = _user_path(error["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(text, loc)
        where = f"{path}:{line}" if line else str(path)
        given = f" (got {error['input']!r})" if error["type"] != "missing" and not isinstance(
            error["input"], dict | list) else ""
        lines.append(f"  {where}: {field}: {error['msg']}{given}")
    return "\n".join(lines)


def _user_path(loc: tuple) -> list:
    """pydantic puts a stage's or filter's ``type`` tag in the path (``stages.0.respond.x``);
    the user wrote ``stages.0.x``."""
    return [part for i, part in enumerate(loc)
            if not (i >= 2 and isinstance(loc[i - 1], int) and loc[i - 2] in ("stages", "filters"))]


def _line_of(text: str, loc: list) -> int | None:
    """The 1-based YAML line of the deepest node of ``loc`` that exists in the file."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == str(part)), None)
            key = next((k for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            line, node = key.start_mark.line + 1, match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def json_schema() -> dict[str, Any]:
    """The spec's JSON Schema, for editors (``sdg schema > sdg-spec.schema.json``)."""
    return Spec.model_json_schema()
