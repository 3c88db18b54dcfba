"""What a person sees: a quickstart-like `sdg run` (the tiny model answering seeds), its whole
terminal output captured. vLLM's and Ray's output goes to DIR/logs/, sdg's summary is the last line."""

import re
import subprocess
import sys

from tests.runs import make_spec

# vLLM's log lines ("WARNING 11-22 06:46:54 [file.py:73] ..."), Ray's forwarded worker output
# ("(EngineReplica pid=1)"), torch's C++ warnings ("[W1122 ..."), glog lines ("[2026-11-22 ...").
FOREIGN = re.compile(r"^(?:\x1b\[\d+m)?\(\w+ pid=|(?:DEBUG|INFO|WARNING|ERROR) \d\d-\d\d |^\[W\d{4}|^\[\d{4}-\d\d-\d\d")


def test_quickstart_output_is_sdgs_own_and_ends_with_the_summary(tmp_path, sdg_env):
    spec = make_spec(tmp_path, 8)
    finished = subprocess.run([sys.executable, "-m", "gen.cli", "run", str(spec), "--set", f"output.dir={tmp_path / 'out'}",
                               "--set", "filters=[]", "--no-progress"], cwd=tmp_path, env=sdg_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    lines = finished.stdout.splitlines()
    assert finished.returncode == 0, finished.stdout[-3000:]
    assert not [line for line in lines if FOREIGN.search(line)], finished.stdout
    assert "\x1b[" not in finished.stdout  # no colour when not on a terminal
    assert re.fullmatch(r"8 kept, 0 rejected records in \S+ \(\d+ tokens generated this run, [\d.]+ tok/s\); "
                        r"report: \S+/report\.html", lines[-1]), lines[-1]
    assert len(lines) <= 20, finished.stdout  # progress, a restated warning or two, 8 records shown, the summary
    logs = tmp_path / "out" / "logs"
    engine_log = (logs / "replica-0.log").read_text()
    assert "Enforce eager set" in engine_log and "\x1b[" not in engine_log  # vLLM's lines are here instead
    assert (logs / "ray").is_symlink() and any((logs / "ray").glob("raylet*"))
    assert "started 1 vLLM replica(s)" in (logs / "sdg.log").read_text()
    # a warning that matters is said once, in sdg's words
    if "libtcmalloc is not found" in engine_log:
        assert sum("vLLM runs without tcmalloc" in line for line in lines) == 1
