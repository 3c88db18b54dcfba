"""Connecting this process to Ray: an embedded single-machine cluster, or an existing one.

Token authentication (Ray 2.60 turns it on by default) is handled here so that nobody has to
export anything. How Ray 2.60 behaves, which is what the code below works around:

* The token comes from ``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``, else
  ``~/.ray/auth_token``. Ray uses it only when the process's auth mode is ``token``, and the mode
  is read from ``RAY_AUTH_MODE`` (cached when ``ray`` is imported).
* ``ray.init()`` starting a new cluster turns token mode on itself (and writes a token to
  ``~/.ray/auth_token`` if there is none); so does ``address="auto"`` if a token exists.
* ``ray.init(address="HOST:PORT")`` or ``"ray://..."`` never does: against a token cluster it
  retries for ~20 s and fails with ``ConnectionError``. Turning token mode on blindly is wrong too:
  a token-mode driver on a cluster without auth rejects the cluster's own calls to it, and its
  actors die before they start. So for ``HOST:PORT`` we ask the cluster's GCS first.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ray

AUTH_MODE_VARIABLE = "RAY_AUTH_MODE"


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address`` ("auto", "HOST:PORT", "ray://HOST:PORT"), or start one.

    With no address (and no ``RAY_ADDRESS``), an embedded cluster is started for this process
    alone, with ``num_cpus`` CPUs (default: all). ``num_cpus`` is ignored when joining: the
    cluster's nodes say what they have. Does nothing if Ray is already initialised, so a test
    session or a caller can set Ray up its own way first. The workers' output (vLLM's, through the
    engine replicas) is not copied to this process's terminal: a run keeps it in ``DIR/logs/``.

    Returns whether this call connected, so the caller who connected also disconnects.
    """
    if ray.is_initialized():
        return False
    # The driver of a Ray job gets its cluster in RAY_ADDRESS (set by the job supervisor).
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        # "local" always starts a new cluster. ray.init()'s default would instead follow a
        # ray_current_cluster file that an unclean `ray stop` can leave behind, pointing at a
        # dead cluster (and then refuse num_cpus, which is only for new clusters).
        # Ray warns on every new cluster that token auth is on; this one is private to us.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR)
        # Ray runs its workers at niceness 15 by default, so a replica's vLLM processes would
        # lose the CPU to anything else on the machine, this driver included; at 0 they run as a
        # bare vLLM does, and sdg's own processes yield to them (cluster.engine.yield_cpu_to_engine).
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False, _system_config={"worker_niceness": 0})
        return True
    _use_token_if_cluster_requires_it(address)
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    return True


def local_logs_dir() -> Path | None:
    """The Ray session's log directory when every node of the cluster is this machine (the
    embedded cluster), else None: a joined cluster's logs are on its nodes (``ray logs``)."""
    here = ray.util.get_node_ip_address()
    if any(node["NodeManagerAddress"] != here for node in ray.nodes() if node["Alive"]):
        return None
    return Path(ray._private.worker._global_node.get_logs_dir_path())


def _use_token_if_cluster_requires_it(address: str) -> None:
    """Turn this process's token mode on when the cluster at ``address`` requires a token.

    An explicit ``RAY_AUTH_MODE`` is the user's decision and is left alone; ``auto`` is left to
    Ray, which decides it the same way ``ray start`` does.
    """
    if AUTH_MODE_VARIABLE in os.environ or address == "auto":
        return
    if address.startswith("ray://"):
        # A Ray Client has no worker of its own to protect, so sending a token a cluster does
        # not ask for is harmless, and the client proxy gives us no cheap way to ask.
        needed = auth_token_header() != {}
    else:
        needed = _gcs_requires_token(address)
    if needed:
        from ray._raylet import Config

        os.environ[AUTH_MODE_VARIABLE] = "token"  # also for the processes this one starts
        Config.initialize("")  # Ray caches the mode at import: make it read the variable again


def _gcs_requires_token(gcs_address: str) -> bool:
    """Ask the GCS for its cluster id without a token: a token cluster answers UNAUTHENTICATED."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(gcs_address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=10)
        except grpc.RpcError as exc:
            # Unreachable is not our business here: ray.init() reports it better.
            return exc.code() == grpc.StatusCode.UNAUTHENTICATED
    return False


def auth_token_header() -> dict[str, str]:
    """``{"authorization": "Bearer <token>"}`` from wherever Ray would find the token, or ``{}``.

    Read whatever this process's auth mode is; :mod:`cluster.jobs` decides where it may be sent.
    """
    from ray._raylet import AuthenticationTokenLoader

    return AuthenticationTokenLoader.instance().get_token_for_http_header(ignore_auth_mode=True)
