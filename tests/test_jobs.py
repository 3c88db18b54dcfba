"""Against a real head node started for this module (token auth, job server): joining it with
``connect``, and running jobs on it through ``cluster.jobs``; last, with a second node joined to
it, a submitted run whose replicas are spread over the two raylets.

Each node runs in its own process group and temp dir, so it neither sees nor disturbs the test
session's embedded Ray; it is stopped by signalling that group, never with ``ray stop`` (which
stops every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests

from cluster import jobs
from cluster.ray_cluster import auth_token_header

VENV_BIN = Path(sys.executable).parent
SEEDS = [
    "Name three colours of the rainbow.",
    "Write one sentence about the sea.",
    "What is two plus two?",
    "Suggest a name for a cat.",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _http_status(url: str) -> int | None:
    """The status of an anonymous GET, or None while nothing listens there."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@dataclass(frozen=True)
class Head:
    gcs_address: str  # what `sdg run --address` takes
    dashboard: str  # what `sdg submit --address` takes


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    """A head node with a job server, in token-auth mode, with one CPU: one replica's."""
    # `ray start` turns token auth on by default when a token exists; make sure one does, as
    # the first `ray.init()` on a machine would. The client side then finds the same token file.
    subprocess.run([VENV_BIN / "ray", "get-auth-token", "--generate"], check=True,
                   capture_output=True)
    # Short path: Ray's unix sockets live below it and must fit in 107 characters.
    temp_dir = tempfile.mkdtemp(prefix="sdg-head-", dir="/tmp")
    ports: dict[str, int] = {}

    def options():
        ports.update(gcs=_free_port(), dashboard=_free_port())
        # 401: this is our token-auth job server, not whatever else may listen there.
        return (["--head", f"--port={ports['gcs']}", f"--dashboard-port={ports['dashboard']}",
                 "--include-dashboard=true", "--num-cpus=1", f"--ray-client-server-port={_free_port()}",
                 f"--dashboard-agent-listen-port={_free_port()}", f"--temp-dir={temp_dir}"],
                lambda: _http_status(f"http://127.0.0.1:{ports['dashboard']}/api/jobs/") == 401)

    try:
        with _ray_started(options, temp_dir):
            yield Head(f"127.0.0.1:{ports['gcs']}", f"http://127.0.0.1:{ports['dashboard']}")
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def second_node(head) -> Iterator[list[str]]:
    """A worker node of one CPU joined to the head: a cluster of two raylets, as two machines
    would make, on this one (its own temp dir and ports). Yields both nodes' ids."""
    temp_dir = tempfile.mkdtemp(prefix="sdg-node-", dir="/tmp")

    def options():
        return ([f"--address={head.gcs_address}", "--num-cpus=1",
                 f"--dashboard-agent-listen-port={_free_port()}", f"--temp-dir={temp_dir}"],
                lambda: len(_alive_nodes(head)) == 2)

    try:
        # Unlike `ray start --head`, a joining node does not turn token mode on when a token
        # exists: it is told, or the head refuses it.
        with _ray_started(options, temp_dir, {"RAY_AUTH_MODE": "token"}):
            yield _alive_nodes(head)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def _ray_started(options: Callable[[], tuple[list[str], Callable[[], bool]]], temp_dir: str,
                 settings: dict[str, str] | None = None) -> Iterator[None]:
    """``ray start --block`` with the arguments ``options()`` returns, in its own process group
    (with the environment ``settings``), until the readiness check it returns with them passes;
    stopped on exit by signalling that group. A port found free is released before Ray binds it,
    so another process can take it first: then Ray exits, and it is started again with new
    ``options()``."""
    env = {**_env_without_ray_settings(), **(settings or {})}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env['PATH']}"  # the job's `python` is this venv's
    env["RAY_TMPDIR"] = temp_dir  # keeps its ray_current_cluster file away from /tmp/ray
    process = None
    try:
        for _attempt in range(3):
            arguments, ready = options()
            process = subprocess.Popen([VENV_BIN / "ray", "start", "--block", *arguments], env=env,
                                       start_new_session=True, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 90
            while not ready() and process.poll() is None:
                assert time.monotonic() < deadline, f"ray start {arguments[0]} was not ready in 90 s"
                time.sleep(1)
            if process.poll() is None:
                break
        assert process.poll() is None, f"ray start {arguments[0]} exited three times"
        yield
    finally:
        if process is not None:
            process.terminate()  # --block: the node drains, stops its processes and exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # anything it left behind
            process.wait()


def _alive_nodes(head: Head) -> list[str]:
    """The ids of the cluster's live nodes, from the dashboard's state API."""
    reply = requests.get(f"{head.dashboard}/api/v0/nodes", headers=auth_token_header(), timeout=10)
    reply.raise_for_status()
    return [node["node_id"] for node in reply.json()["data"]["result"]["result"] if node["state"] == "ALIVE"]


def _env_without_ray_settings() -> dict[str, str]:
    """This environment minus what would point Ray elsewhere or settle its auth mode for it."""
    return {key: value for key, value in os.environ.items()
            if key not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}


def test_anonymous_requests_are_refused(head):
    """Guards the other tests' meaning: the cluster really requires the token."""
    assert _http_status(f"{head.dashboard}/api/jobs/") == 401


def test_connect_joins_a_token_cluster_with_nothing_exported(head):
    # Plain ray.init(address=HOST:PORT) would retry for 20 s and fail: it sends no token.
    script = f"""
import ray
from cluster.ray_cluster import connect
connect({head.gcs_address!r})

@ray.remote(num_cpus=0)
class Echo:
    def ping(self):
        return "pong"

print(ray.get(Echo.remote().ping.remote(), timeout=60))
"""
    result = subprocess.run([sys.executable, "-c", script], env=_env_without_ray_settings(),
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.split()[-1:] == ["pong"], result.stderr


def test_command_job_gets_token_working_dir_and_packages(head, tmp_path):
    (tmp_path / "note.txt").write_text("shipped")
    code = ("import gen, filters, cluster; "
            "print(open('note.txt').read(), gen.__file__, os.environ.get('RAY_AUTH_MODE'))")
    job_id = jobs.submit_command(head.dashboard, f'python -c "import os; {code}"', tmp_path)

    assert jobs.wait(job_id, head.dashboard, timeout=120) == "SUCCEEDED", "".join(
        jobs.logs(job_id, head.dashboard))
    note, gen_file, auth_mode = "".join(jobs.logs(job_id, head.dashboard)).split()[-3:]
    assert note == "shipped"
    assert "runtime_resources" in gen_file  # the uploaded copy, not this checkout's
    assert auth_mode == "token"  # so `sdg run` in the job joins the token cluster


def test_submitted_run_writes_shards_where_the_submitter_asked(head, tmp_path,
                                                                monkeypatch):
    # The seeds sit beside, not below, the spec: "../data/..." must still resolve in the job.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "seeds.jsonl").write_text(
        "".join(json.dumps({"instruction": s}) + "\n" for s in SEEDS))
    (tmp_path / "specs").mkdir()
    spec = tmp_path / "specs" / "tiny.yaml"
    spec.write_text(
        "seeds: {paths: [../data/seeds.jsonl]}\n"
        "model: {name: sdg/tiny-random-chat, max_model_len: 1024,"
        " engine_args: {kv_cache_memory_bytes: 536870912}}\n"
        "sampling: {max_tokens: 16}\n"
        "stages: [{type: respond}]\n"
        "output: {dir: out}\n")
    monkeypatch.chdir(tmp_path)  # the relative output dir is the submitter's tmp_path/out

    job_id = jobs.submit(spec, head.dashboard, ["sampling.temperature=0.5"])
    final = jobs.wait(job_id, head.dashboard, timeout=600)
    output = "".join(jobs.logs(job_id, head.dashboard, follow=True))

    assert final == "SUCCEEDED", output
    assert jobs.status(job_id, head.dashboard) == "SUCCEEDED"
    assert "kept" in output  # the run's summary line reached the job log
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    shards = sorted((tmp_path / "out" / "data").glob("*.parquet"))
    assert shards
    assert sum(pq.read_metadata(shard).num_rows for shard in shards) == len(SEEDS)
    assert manifest["totals"]["kept"] == len(SEEDS)


def test_a_submitted_run_spreads_its_replicas_over_two_raylets(head, second_node, tmp_path):
    """Two replicas of one CPU each on a cluster of two one-CPU raylets: one replica per node.
    The output dir is a local path, which both "nodes" see here as a shared filesystem would on a
    real cluster (the replicas write their logs into it, the driver its shards). Where each
    replica ran is read from what the run recorded (its manifest), not asked of Ray."""
    seeds = [f"Write one sentence about the number {number}." for number in range(16)]
    (tmp_path / "seeds.jsonl").write_text("".join(json.dumps({"instruction": s}) + "\n" for s in seeds))
    spec = tmp_path / "spread.yaml"
    spec.write_text(
        "seeds: {paths: [seeds.jsonl]}\n"
        "model: {name: sdg/tiny-random-chat, replicas: 2, max_model_len: 1024,"
        " engine_args: {kv_cache_memory_bytes: 268435456}}\n"
        "sampling: {max_tokens: 16, ignore_eos: true}\n"
        "stages: [{type: respond}]\n"
        f"output: {{dir: {tmp_path / 'out'}}}\n")

    job_id = jobs.submit(spec, head.dashboard)
    final = jobs.wait(job_id, head.dashboard, timeout=600)
    output = "".join(jobs.logs(job_id, head.dashboard))

    assert final == "SUCCEEDED", output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    replicas = manifest["this_run"]["replicas_by_model"]["sdg/tiny-random-chat"]
    started_on = [replica["placements"][0]["node_id"] for replica in replicas]
    assert sorted(started_on) == sorted(second_node)  # one replica on each raylet
    assert all(len(replica["placements"]) == 1 for replica in replicas)  # neither was moved
    assert all(replica["placements"][0]["resources"] == {"CPU": 1.0} for replica in replicas)
    # Both served, and what they served is the run's whole generation.
    assert all(replica["completion_tokens"] > 0 for replica in replicas)
    assert sum(replica["completion_tokens"] for replica in replicas) == len(seeds) * 16
    assert manifest["this_run"]["completion_tokens"] == len(seeds) * 16
    assert re.search(r"started 2 vLLM replica\(s\) of \S+ \(CPU\) on 2 nodes: replica 0 on .*; replica 1 on ",
                     output), output
    shards = sorted((tmp_path / "out" / "data").glob("*.parquet"))
    assert sum(pq.read_metadata(shard).num_rows for shard in shards) == len(seeds)
    assert manifest["totals"]["kept"] == len(seeds) and manifest["status"] == "complete"
    # Each replica's log was written into the shared dir from its own node.
    assert all((tmp_path / "out" / "logs" / f"replica-{index}.log").stat().st_size > 0 for index in (0, 1))
