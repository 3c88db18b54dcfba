"""The progress line: done of total and the ETA once the total, counted beside the run, is set;
a count that fails leaves the line without a total and the run going."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

import gen.progress
from gen.progress import LiveProgress, Progress
from gen.run import _total_beside_the_run


@pytest.fixture
def clock(monkeypatch):
    now = SimpleNamespace(t=100.0)
    monkeypatch.setattr(gen.progress, "time", SimpleNamespace(monotonic=lambda: now.t))
    return now


def answered(n):
    return [{"stage": "respond", "completion_tokens": 10}] * n


def test_the_line_shows_done_of_total_and_the_eta_once_the_total_is_set(clock):
    progress = Progress()
    progress.start(total=None, done=3)  # resumed: 3 work items committed before
    clock.t += 10
    progress.advance(answered(1))
    progress.advance(answered(1))
    assert progress.line() == "5 work items (respond 2), 2 tok/s"
    progress.set_total(10)
    # 2 work items in 10 s this run: the 5 left take 25 s
    assert progress.line() == "5/10 work items (respond 2), 2 tok/s, ETA 25 s"


def test_the_live_line_gets_the_total(clock):
    from rich.progress import MofNCompleteColumn

    progress = LiveProgress()
    progress.start(total=None, done=0)
    try:
        progress.advance(answered(1))
        assert str(MofNCompleteColumn().render(progress._bar.tasks[0])) == "1/?"
        progress.set_total(7)
        assert str(MofNCompleteColumn().render(progress._bar.tasks[0])) == "1/7"
    finally:
        progress.close()


def test_the_total_is_counted_beside_the_run_and_a_failed_count_leaves_none(caplog):
    progress = Progress()
    progress.start(total=None, done=0)
    _total_beside_the_run(lambda: 42, progress).join(timeout=10)
    assert progress.total == 42

    def unreachable_store():
        raise OSError("When reading information for key 'seeds/a.jsonl': AWS Error NETWORK_CONNECTION")

    progress.start(total=None, done=0)
    with caplog.at_level(logging.WARNING, logger="gen.run"):
        _total_beside_the_run(unreachable_store, progress).join(timeout=10)
    assert progress.total is None and "no total" in caplog.text and "NETWORK_CONNECTION" in caplog.text
    assert progress.line().startswith("0 work items") and "ETA" not in progress.line()
