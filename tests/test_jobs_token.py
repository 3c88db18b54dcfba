"""Where ``sdg submit/status/logs`` send the cluster's auth token: only to a Ray dashboard that asks
for it, and over plain http only on this machine unless allowed. Against a local HTTP server that
records every request's Authorization header (the real token cluster is in test_jobs.py)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cluster import jobs
from cluster.ray_cluster import auth_token_header

JOB = "raysubmit_test"


class Recorder(ThreadingHTTPServer):
    """Answers like a Ray dashboard in ``auth_mode`` ("token", "disabled"), or like some other web
    server (None: 200 and an HTML page for everything); records (path, Authorization) per request."""

    def __init__(self, host: str, auth_mode: str | None):
        self.auth_mode = auth_mode
        self.seen: list[tuple[str, str | None]] = []
        super().__init__((host, 0), Handler)

    @property
    def authorizations(self) -> list[str]:
        return [auth for _, auth in self.seen if auth]


class Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        auth = self.headers.get("Authorization")
        self.server.seen.append((self.path, auth))
        mode = self.server.auth_mode
        if mode is None:
            return self.reply(200, "<html>a wiki</html>", "text/html")
        if self.path == "/api/authentication_mode":  # Ray's dashboard answers this without a token
            return self.reply(200, json.dumps({"authentication_mode": mode}))
        if mode == "token" and not auth:
            return self.reply(401, "Unauthorized: Missing authentication token", "text/plain")
        if self.path == "/api/version":
            return self.reply(200, json.dumps({"version": "4", "ray_version": "2.60.0", "ray_commit": "x"}))
        if self.path == f"/api/jobs/{JOB}":
            return self.reply(200, json.dumps({"type": "SUBMISSION", "job_id": None, "submission_id": JOB,
                                               "status": "RUNNING", "entrypoint": "true"}))
        return self.reply(404, "not found", "text/plain")

    def reply(self, status: int, body: str, content_type: str = "application/json") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serving(host: str, auth_mode: str | None) -> Iterator[Recorder]:
    server = Recorder(host, auth_mode)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def a_token(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "a" * 32)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("SDG_TOKEN_OVER_HTTP", raising=False)
    assert auth_token_header(), "no token for these tests to guard"


@pytest.mark.parametrize("auth_mode", [None, "disabled"])
def test_no_token_to_a_server_that_does_not_ask_for_one(auth_mode):
    with serving("127.0.0.1", auth_mode) as server:
        address = f"http://127.0.0.1:{server.server_port}"
        with contextlib.suppress(Exception):  # neither answers a job status request like Ray would
            jobs.status(JOB, address)
    assert server.seen, "the client never reached the server"
    assert server.authorizations == []


def test_the_token_goes_to_a_local_ray_dashboard_that_asks_for_it():
    with serving("127.0.0.1", "token") as server:
        assert jobs.status(JOB, f"http://127.0.0.1:{server.server_port}") == "RUNNING"
        assert jobs.status(JOB, f"http://localhost:{server.server_port}") == "RUNNING"
    # this process's token: RAY_AUTH_TOKEN, unless a Ray started earlier in the process loaded one
    assert set(server.authorizations) == {auth_token_header()["authorization"]}


def _non_loopback_ip() -> str | None:
    """This machine's address on its network, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the outgoing interface
        except OSError:
            return None
        ip = probe.getsockname()[0]
    return None if ip.startswith("127.") else ip


@pytest.mark.skipif(_non_loopback_ip() is None, reason="no non-loopback address on this machine")
def test_plain_http_over_the_network_to_a_token_dashboard_is_refused_unless_allowed(monkeypatch):
    ip = _non_loopback_ip()
    with serving(ip, "token") as server:
        address = f"http://{ip}:{server.server_port}"
        with pytest.raises(jobs.InsecureTokenError, match=rf"{address} requires the cluster's token.*plain http"):
            jobs.status(JOB, address)
        assert server.authorizations == []
        monkeypatch.setenv("SDG_TOKEN_OVER_HTTP", "1")
        assert jobs.status(JOB, address) == "RUNNING"
    assert server.authorizations


def test_cli_reports_the_refusal_without_a_traceback(monkeypatch):
    import subprocess
    import sys

    ip = _non_loopback_ip()
    if ip is None:
        pytest.skip("no non-loopback address on this machine")
    with serving(ip, "token") as server:
        result = subprocess.run([sys.executable, "-m", "gen.cli", "status", JOB, "--address",
                                 f"http://{ip}:{server.server_port}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "plain http" in result.stderr and "Traceback" not in result.stderr
    assert server.authorizations == []
