"""Where a run's output goes: sdg's own lines to the terminal, vLLM's and Ray's to ``DIR/logs/``.

    DIR/logs/sdg.log          the driver's log: sdg's lines and every library's, with timestamps
    DIR/logs/replica-N.log    each engine replica's output (vLLM's engine core and workers too)
    DIR/logs/ray              a link to the embedded Ray cluster's own logs (raylet, GCS, workers)

``DIR/logs/`` is kept when the output dir is local; with an output on an object store
(``s3://...``) the driver's lines go to the terminal only and the replicas' output stays in Ray's
logs, as on a joined cluster.

The terminal shows sdg's progress and messages, and any logger's errors. A warning in the engines'
output that matters to the user (a slow path, a missing optimisation) is restated there once, in
sdg's words. Colour only on a terminal: the log files have none.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from gen.storage import Location, is_uri

log = logging.getLogger("sdg.logs")

LOGS = "logs"
SDG_LOGGERS = ("gen", "filters", "cluster", "sdg")

# A line of vLLM's output -> what it means for the user, said once.
RESTATED = {
    "libtcmalloc is not found in LD_PRELOAD": (
        "vLLM runs without tcmalloc (not in LD_PRELOAD): CPU decoding is slower than it can be; "
        "see 'set LD_PRELOAD' in vLLM's CPU installation guide"),
    "libiomp is not found in LD_PRELOAD": (
        "vLLM runs without Intel's OpenMP (libiomp, not in LD_PRELOAD): CPU decoding is slower than it can be"),
    "Compiling model again": "vLLM could not load its compile cache and compiled the model again (a slower start)",
}


def local_logs(out_dir: str | Path) -> Path | None:
    """``DIR/logs`` of a local output dir; None for a URI (an object store cannot append to a log)."""
    return None if is_uri(str(out_dir)) else Path(out_dir) / LOGS


def setup_logging(out_dir: str | Path) -> None:
    """sdg's lines (INFO and up) and every logger's errors to the terminal; everything to
    ``DIR/logs/sdg.log`` when the output dir is local."""
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    terminal.addFilter(lambda record: record.levelno >= logging.ERROR or record.name.split(".")[0] in SDG_LOGGERS)
    handlers: list[logging.Handler] = [terminal]
    if logs := local_logs(out_dir):
        try:
            logs.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(logs / "sdg.log"))
            handlers[-1].setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        except OSError:
            pass  # an unwritable output dir: the run says so itself, naming it
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    logging.captureWarnings(True)  # library warnings to the log, not the terminal


def engine_log_dir(root: Location) -> Path | None:
    """``DIR/logs`` for the engine replicas' output, with a link to Ray's logs, when the cluster
    is this machine and the output dir local; otherwise the replicas' output stays in Ray's logs
    on their nodes."""
    from cluster.ray_cluster import local_logs_dir

    ray_logs = local_logs_dir() if root.local else None
    if ray_logs is None:
        return None
    logs = Path(root.path) / LOGS
    logs.mkdir(exist_ok=True)
    link = logs / "ray"
    link.unlink(missing_ok=True)  # a resumed run links its own cluster's
    link.symlink_to(ray_logs, target_is_directory=True)
    return logs


def restate_warnings(logs: Path) -> None:
    """Each warning of :data:`RESTATED` found in the replicas' logs, once, in sdg's words."""
    found = set()
    for path in sorted(logs.glob("replica-*.log")):
        text = path.read_text(errors="replace")
        found.update(line for line in RESTATED if line in text)
    for line in RESTATED:
        if line in found:
            log.warning("%s (%s)", RESTATED[line], logs)
