"""The ``sdg`` command line. Each command is a thin shell over one function of the package."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Annotated, Optional

import typer

from gen.storage import Location, is_uri

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Synthetic instruction data: vLLM on Ray, filters, Parquet shards.")

SpecArg = Annotated[Path, typer.Argument(help="The run spec (YAML).")]
SetOpt = Annotated[Optional[list[str]], typer.Option(  # noqa: UP007 - typer needs Optional
    "--set", help="Override a spec field, e.g. --set model.replicas=2 (repeatable).")]
AddressOpt = Annotated[Optional[str], typer.Option(  # noqa: UP007
    "--address", help="Join this Ray cluster (e.g. auto, HOST:6379) instead of starting a local one.")]
ReportOpt = Annotated[bool, typer.Option(
    "--report/--no-report", help="Write DIR/report.html and the dataset card DIR/README.md at the end.")]
JobsAddressOpt = Annotated[str, typer.Option(
    "--address", envvar="RAY_API_SERVER_ADDRESS", help="The Ray dashboard, e.g. http://HEAD:8265.")]


def _fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _load(spec: Path, overrides: list[str] | None):
    from gen.spec import SpecError, load_spec

    try:
        return load_spec(spec, overrides or [])
    except SpecError as exc:
        _fail(str(exc))


@app.command()
def run(spec: SpecArg, set_: SetOpt = None, address: AddressOpt = None,
        progress: Annotated[Optional[bool], typer.Option(  # noqa: UP007
            "--progress/--no-progress", help="Live progress line (default: when on a terminal).")] = None,
        report: ReportOpt = True):
    """Generate: seeds through the spec's stages and filters into Parquet shards."""
    _run(_load(spec, set_), address, progress, report)


def _run(spec, address: str | None, progress: bool | None, report: bool) -> None:
    from cluster.engine import EngineUnavailable, ResourcesUnavailable
    from gen.errors import RunStopped
    from gen.logs import local_logs, setup_logging
    from gen.run import run as run_spec
    from gen.seeds import SeedError
    from gen.sink import OutputError

    setup_logging(spec.output.dir)
    try:
        manifest = run_spec(spec, address=address, progress=progress, report=report)
    except (SeedError, OutputError, ResourcesUnavailable) as exc:
        _fail(str(exc))
    except (RunStopped, EngineUnavailable) as exc:
        typer.secho(f"run stopped: {exc}", fg=typer.colors.RED, err=True)
        logs = local_logs(spec.output.dir) or "Ray's logs"
        typer.secho(f"committed work is intact in {spec.output.dir}; the same command resumes it "
                    f"(engine and Ray output: {logs})", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=getattr(exc, "exit_code", 1)) from None
    out_dir = Location.of(spec.output.dir)
    _show_kept(out_dir.child("data"))
    totals, this_run = manifest["totals"], manifest["this_run"]
    described = f"report: {out_dir.child('report.html')}" if report else f"manifest: {out_dir.child('manifest.json')}"
    typer.echo(
        f"{totals['kept']} kept, {totals['rejected']} rejected records in {spec.output.dir} "
        f"({this_run['completion_tokens']} tokens generated this run, "
        f"{this_run['tokens_per_s']} tok/s); {described}")


SHOWN_RECORDS = 3
SHOWN_CHARS = 160  # per message


def _show_kept(data: Location) -> None:
    """The first few kept records, each message shortened, so a run ends by showing what it made."""
    import pyarrow.dataset as ds

    shards = data.files(".parquet")
    if not shards:
        return
    rows = ds.dataset([s.path for s in shards], filesystem=data.fs, format="parquet").head(
        SHOWN_RECORDS, columns=["messages"]).to_pylist()
    if rows:
        typer.echo(f"The first {len(rows)} kept records:")
    for row in rows:
        for turn, message in enumerate(row["messages"]):
            text = textwrap.shorten(message["content"], SHOWN_CHARS, placeholder=" ...")
            typer.echo(f"{'  - ' if turn == 0 else '    '}{message['role']}: {text}")


@app.command("filter")
def filter_(inputs: Annotated[list[str], typer.Argument(help="JSONL, JSON or Parquet files, globs or URIs.")],
            spec: Annotated[Path, typer.Option("--spec", help="A spec whose filters section to apply.")],
            output: Annotated[str, typer.Option("--output", help="The output dir or URI (same layout as sdg run).")],
            set_: SetOpt = None, address: AddressOpt = None,
            progress: Annotated[Optional[bool], typer.Option("--progress/--no-progress")] = None,  # noqa: UP007
            report: ReportOpt = True):
    """Run only the spec's filter chain over an existing dataset (resumable, like sdg run)."""
    paths = [p if is_uri(p) else str(Path(p).absolute()) for p in inputs]
    output = output if is_uri(output) else str(Path(output).absolute())
    overrides = [f"seeds.paths={json.dumps(paths)}", f"output.dir={json.dumps(output)}",
                 "stages=[]", *(set_ or [])]
    _run(_load(spec, overrides), address, progress, report)


@app.command()
def report(output: Annotated[str, typer.Argument(help="An output dir or URI of sdg run or sdg filter.")]):
    """Describe an output dir: DIR/report.html (plots also as DIR/report/*.png) and the dataset card DIR/README.md."""
    from gen.report import write_report

    try:
        root = Location.of(output)
    except ValueError as exc:
        _fail(str(exc))
    if not root.child("spec.json").exists():
        _fail(f"{output}: not an sdg output dir (no spec.json)")
    typer.echo(f"report: {write_report(root)}")


@app.command()
def validate(spec: SpecArg, set_: SetOpt = None):
    """Check a spec and read its seeds, without starting anything."""
    from gen.seeds import SeedError, SeedReader

    loaded = _load(spec, set_)
    seeds = SeedReader(**loaded.seeds.model_dump()) if loaded.seeds else None
    try:
        count = sum(1 for _ in seeds) if seeds else 0
    except SeedError as exc:
        _fail(str(exc))
    skipped = f", {seeds.skipped} malformed skipped" if seeds and seeds.skipped else ""
    typer.echo(f"{spec}: ok ({len(loaded.stages)} stage(s), {len(loaded.filters)} filter(s), "
               f"{count} seed record(s){skipped})")


@app.command()
def schema():
    """Print the spec's JSON Schema (for editors)."""
    from gen.spec import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


@app.command()
def submit(spec: SpecArg, address: JobsAddressOpt, set_: SetOpt = None):
    """Submit the run as a Ray job; prints the job id."""
    from cluster.jobs import InsecureTokenError
    from cluster.jobs import submit as submit_job
    from gen.spec import SpecError

    try:
        typer.echo(submit_job(spec, address, set_ or []))
    except (SpecError, InsecureTokenError) as exc:  # refused here, before anything reaches the cluster
        _fail(str(exc))


@app.command()
def status(job_id: str, address: JobsAddressOpt):
    """The status of a submitted job."""
    from cluster.jobs import InsecureTokenError
    from cluster.jobs import status as job_status

    try:
        typer.echo(job_status(job_id, address))
    except InsecureTokenError as exc:
        _fail(str(exc))


@app.command()
def logs(job_id: str, address: JobsAddressOpt,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until the job ends.")] = False):
    """The logs of a submitted job."""
    from cluster.jobs import InsecureTokenError
    from cluster.jobs import logs as job_logs

    try:
        for chunk in job_logs(job_id, address, follow):
            typer.echo(chunk, nl=False)
    except InsecureTokenError as exc:
        _fail(str(exc))


if __name__ == "__main__":
    app()
