"""Against a real head node started for this module (token auth, job server): joining it with
``connect``, and running jobs on it through ``cluster.jobs``.

The head runs in its own process group and temp dir, so it neither sees nor disturbs the test
session's embedded Ray; it is stopped by signalling that group, never with ``ray stop`` (which
stops every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster import jobs

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
    """A head node with a job server, in token-auth mode."""
    # `ray start` turns token auth on by default when a token exists; make sure one does, as
    # the first `ray.init()` on a machine would. The client side then finds the same token file.
    subprocess.run([VENV_BIN / "ray", "get-auth-token", "--generate"], check=True,
                   capture_output=True)
    # Short path: Ray's unix sockets live below it and must fit in 107 characters.
    temp_dir = tempfile.mkdtemp(prefix="sdg-head-", dir="/tmp")
    env = _env_without_ray_settings()
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env['PATH']}"  # the job's `python` is this venv's
    env["RAY_TMPDIR"] = temp_dir  # keeps its ray_current_cluster file away from /tmp/ray
    process = None
    try:
        # A port found free is released before Ray binds it, so another process can take it
        # first: then the head exits, and it is started again on other ports.
        for _attempt in range(3):
            port, dashboard_port = _free_port(), _free_port()
            process = subprocess.Popen(
                [VENV_BIN / "ray", "start", "--head", "--block", f"--port={port}",
                 f"--dashboard-port={dashboard_port}", "--include-dashboard=true", "--num-cpus=2",
                 f"--ray-client-server-port={_free_port()}",
                 f"--dashboard-agent-listen-port={_free_port()}", f"--temp-dir={temp_dir}"],
                env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            dashboard = f"http://127.0.0.1:{dashboard_port}"
            deadline = time.monotonic() + 90
            # 401: this is our token-auth job server, not whatever else may listen there.
            while _http_status(f"{dashboard}/api/jobs/") != 401 and process.poll() is None:
                assert time.monotonic() < deadline, "the job server did not come up in 90 s"
                time.sleep(1)
            if process.poll() is None:
                break
        assert process.poll() is None, "ray start --head exited three times"
        yield Head(f"127.0.0.1:{port}", dashboard)
    finally:
        if process is not None:
            process.terminate()  # --block: the head drains its node, stops its processes and exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # anything it left behind
            process.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


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
