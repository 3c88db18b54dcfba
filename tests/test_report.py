"""What a run says about its output: the report (opened in a real headless Chromium), the dataset
card (read back by `datasets`), the time series, and Ray's metrics read from its Prometheus endpoint."""

import json
import os
import shutil
import signal
import threading
import time
import urllib.request

import pytest
import yaml

from gen.run import run
from gen.spec import load_spec
from tests.runs import make_spec

SECTIONS = ["funnel", "examples", "distributions", "diversity", "engine"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def described(tmp_path_factory, engine_pool):
    """A run of 40 seeds on the tiny model with a reject (a prompt too long), dedup, and the
    license set in the spec; 256 tokens an answer, so that the run lasts several of the time
    series' 1-s samples (at 48 it can end between two on a quiet machine)."""
    tmp_path = tmp_path_factory.mktemp("described")
    too_long = json.dumps({"instruction": "word " * 2000})
    spec = load_spec(make_spec(tmp_path, 40, [too_long]), [f"output.dir={tmp_path / 'out'}", "card.license=apache-2.0",
                                                             "sampling.max_tokens=256"])
    manifest = run(spec, engine=engine_pool, progress=False)
    return tmp_path / "out", manifest


def test_report_has_every_section_and_its_plots(described):
    out, _ = described
    page = (out / "report.html").read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    pngs = {p.stem for p in (out / "report").glob("*.png")}
    assert pngs >= {"funnel", "drops", "lengths", "turns", "languages", "finish_reasons", "rouge_l",
                    "verb_objects", "engine"}
    assert all((out / "report" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in pngs)
    assert "Dropped by respond: prompt_too_long" in page
    assert page.count("data:image/png;base64,") == len(pngs)  # self-contained: every plot inlined


def test_timeline_counts_this_runs_tokens(described):
    out, manifest = described
    samples = [json.loads(line) for line in (out / "timeline.jsonl").read_text().splitlines()]
    assert {s["replica"] for s in samples} == {0} and len({s["run"] for s in samples}) == 1
    # sampled when the work began and after it ended: the difference is what this run generated
    assert samples[-1]["completion_tokens"] - samples[0]["completion_tokens"] == \
        manifest["this_run"]["completion_tokens"]
    assert max(s["in_flight"] for s in samples) > 0 and samples[-1]["in_flight"] == 0


def test_dataset_card_loads_both_splits(described):
    datasets = pytest.importorskip("datasets")
    out, manifest = described
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "apache-2.0"
    assert front["size_categories"] == ["n<1K"] and front["task_categories"] == ["text-generation"]
    loaded = datasets.load_dataset(str(out))
    assert set(loaded) == {"data", "rejected"}
    totals = manifest["totals"]
    assert (loaded["data"].num_rows, loaded["rejected"].num_rows) == (totals["kept"], totals["rejected"])
    assert loaded["data"].num_rows + loaded["rejected"].num_rows == 41
    assert "prompt_too_long" in loaded["rejected"]["drop_reason"]
    assert set(loaded["data"]["drop_reason"]) == {None}
    assert "| respond | prompt_too_long | 1 |" in card


def test_another_output_dir_of_the_same_name_loads_its_own_rows(described, tmp_path, engine_pool):
    """datasets caches a local dir by its name and card config: the card must differ per run."""
    datasets = pytest.importorskip("datasets")
    out, _ = described
    datasets.load_dataset(str(out))  # cached under the name "out"
    other = tmp_path / "out"
    second = run(load_spec(make_spec(tmp_path, 3), [f"output.dir={other}"]), engine=engine_pool, progress=False)
    loaded = datasets.load_dataset(str(other))
    assert sum(split.num_rows for split in loaded.values()) == second["totals"]["records"] == 3


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_report_renders_in_chromium(described, tmp_path):
    from playwright.sync_api import sync_playwright

    out, _ = described
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        page.goto((out / "report.html").as_uri())
        records = page.locator("section#examples div.record")
        assert records.count() >= 2  # the rejected one and kept ones, as chat turns
        assert all(records.nth(i).is_visible() for i in range(records.count()))
        for section in [s for s in SECTIONS if s != "examples"]:
            plots = page.locator(f"section#{section} img.plot")
            assert plots.count() >= 1, section
            for index in range(plots.count()):
                plot = plots.nth(index)
                # decoded (naturalWidth) and laid out on the page with a real size
                assert plot.evaluate("img => img.complete && img.naturalWidth > 0"), (section, index)
                box = plot.bounding_box()
                assert box["width"] > 300 and box["height"] > 100, (section, index, box)
        page.screenshot(path=tmp_path / "report.png", full_page=True)
        browser.close()
    assert (tmp_path / "report.png").stat().st_size > 50_000


def test_ray_metrics_endpoint_shows_tokens_during_a_run(tmp_path, engine_pool):
    """Ray exports a process's metrics every ~10 s: a watcher reads the endpoint while the run
    goes and, once it sees the metric, stops the run with SIGINT, as Ctrl-C would. A run that
    finishes first fails the test (no Interrupted)."""
    import ray

    from gen.errors import Interrupted

    spec = load_spec(make_spec(tmp_path, 5000), [f"output.dir={tmp_path / 'out'}", "failures.grace_period_s=0"])
    node = ray.nodes()[0]
    endpoint = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    seen = []

    def watch():
        deadline = time.monotonic() + 600
        while not seen and time.monotonic() < deadline:
            time.sleep(1)
            text = urllib.request.urlopen(endpoint, timeout=10).read().decode()
            seen.extend(line for line in text.splitlines()
                        if line.startswith("ray_sdg_tokens_generated_total{") and 'replica="0"' in line)
        if seen:
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, daemon=True).start()
    with pytest.raises(Interrupted):
        run(spec, engine=engine_pool, progress=False, report=False)
    assert float(seen[0].rsplit(" ", 1)[1]) > 0


def test_a_killed_and_resumed_runs_timeline_shows_both_parts(tmp_path):
    """As a kill -9 leaves it: the first run's last line cut short, then the resumed run's lines."""
    from gen.report.measures import measure
    from gen.storage import Location

    first = [{"run": "A", "t": 100.0 + i, "replica": 0, "completion_tokens": 50 * i, "in_flight": 8, "retried": 0}
             for i in range(5)]
    second = [{"run": "B", "t": 300.0 + i, "replica": 0, "completion_tokens": 20 * i, "in_flight": 4, "retried": 0}
              for i in range(3)]
    lines = [json.dumps(line) for line in first] + ['{"run": "A", "t": 10'] + [json.dumps(line) for line in second]
    (tmp_path / "timeline.jsonl").write_text("\n".join(lines) + "\n")
    m = measure(Location.of(tmp_path))
    assert sorted(m.replicas) == ["A", "B"]
    assert [(at, rate) for at, rate, _ in m.replicas["A"][0]] == [(0.0, 0.0), (1.0, 50.0), (2.0, 50.0), (3.0, 50.0),
                                                                 (4.0, 50.0)]
    assert [(at, rate) for at, rate, _ in m.replicas["B"][0]] == [(200.0, 0.0), (201.0, 20.0), (202.0, 20.0)]
