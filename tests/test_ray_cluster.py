"""``connect(None)``: an embedded cluster, even where a dead cluster left its address behind.

Everything runs in subprocesses with their own ``RAY_TMPDIR``, so neither the test session's
Ray nor /tmp/ray is touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_tmpdir_with_stale_cluster() -> Iterator[str]:
    """A RAY_TMPDIR whose ray/ray_current_cluster names a head node that has since died."""
    # Short path: Ray's unix sockets live below it and must fit in 107 characters.
    tmpdir = tempfile.mkdtemp(prefix="sdg-stale-", dir="/tmp")
    address_file = Path(tmpdir) / "ray" / "ray_current_cluster"
    try:
        head = subprocess.Popen(
            [VENV_BIN / "ray", "start", "--head", "--block", f"--port={_free_port()}",
             "--num-cpus=1", "--include-dashboard=false",
             f"--ray-client-server-port={_free_port()}",
             f"--dashboard-agent-listen-port={_free_port()}"],
            env=_env(tmpdir), start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not (address_file.exists() and address_file.read_text().strip()):
                assert head.poll() is None, "ray start --head exited"
                assert time.monotonic() < deadline, "ray start --head wrote no address in 60 s"
                time.sleep(0.5)
        finally:
            # Killed outright, as by a crash or an interrupted `ray stop`: the file stays.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        yield tmpdir
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _env(ray_tmpdir: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = ray_tmpdir  # Ray's temp dir, where ray_current_cluster lives, is below it
    return env


def _python(code: str, ray_tmpdir: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=_env(ray_tmpdir), capture_output=True,
                          text=True, timeout=180)


def test_connect_starts_an_embedded_cluster_despite_a_stale_address_file(
        ray_tmpdir_with_stale_cluster):
    # What connect() avoids: Ray's default follows the file to the dead cluster.
    plain = _python("import ray; ray.init(num_cpus=1)", ray_tmpdir_with_stale_cluster)
    assert "existing cluster" in plain.stderr

    ours = _python("import ray; from cluster.ray_cluster import connect; connect(None, num_cpus=1);"
                   " print(ray.cluster_resources()['CPU'])", ray_tmpdir_with_stale_cluster)
    assert ours.stdout.split()[-1:] == ["1.0"], ours.stderr
