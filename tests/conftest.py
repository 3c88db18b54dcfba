"""Shared, expensive fixtures: one local Ray and, per test session, one vLLM engine for each
embedded model: the tiny one (noise, fast) and SmolLM2 (real text), started on first use."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # real data beside the project, when present

# Small enough to start beside the subprocess runs some tests make (each reserves its own cache).
# Eager, as every replica on CPU is by default (README: Start-up on CPU).
TEST_ENGINE_ARGS = {"dtype": "float32", "max_model_len": 1024, "kv_cache_memory_bytes": 512 << 20, "seed": 0}


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from cluster.ray_cluster import connect

    # Logical CPUs: the session's shared replicas, the fault tests' own and the runs they start
    # as subprocesses take one each, a test of the CPUs a replica computes on two: side by side.
    connect(None, num_cpus=6)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    from gen.embedded_models import local_path
    from gen.tiny_model import NAME

    return Path(local_path(NAME))


@pytest.fixture(scope="session")
def engine_pool(ray_session, tiny_model_path):
    yield from _pool(str(tiny_model_path))


@pytest.fixture(scope="session")
def smollm2_pool(ray_session):
    from gen.embedded_models import local_path
    from gen.smollm2_model import NAME

    yield from _pool(local_path(NAME))


def _pool(model_path: str, **engine_args):
    from cluster.engine import start_replicas

    pool = start_replicas({"model": model_path, **TEST_ENGINE_ARGS, **engine_args}, replicas=1,
                          tensor_parallel_size=1, max_in_flight_per_replica=64, num_cpus_per_replica=1)
    yield pool
    pool.shutdown()


@pytest.fixture
def sdg_env() -> dict[str, str]:
    """Environment for `sdg` subprocesses: this interpreter's venv first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env


@pytest.fixture(scope="session")
def s3_server():
    """A local S3-compatible server (moto), for this session: pyarrow's own S3 client reaches it
    through the standard AWS environment, which `sdg` subprocesses inherit."""
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    settings = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    yield settings
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A new, empty bucket on the local S3 server, as ``s3://NAME``."""
    import re

    import pyarrow.fs as pafs

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    fs, _ = pafs.FileSystem.from_uri(f"s3://{name}?allow_bucket_creation=true")
    fs.create_dir(name)
    return f"s3://{name}"
