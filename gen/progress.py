"""Progress of a run: a live line on a terminal, plain periodic log lines otherwise.

The line shows work items done, the records each stage has made so far, the share of committed
records dropped (by stages and filters) and completion tokens/s; once the total is known (the seeds
are counted beside the run), the line shows done of total and the ETA.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter

from gen.records import Record

log = logging.getLogger("sdg.progress")

LOG_EVERY_S = 10.0


class Progress:
    @staticmethod
    def create(live: bool | None = None) -> Progress:
        live = sys.stderr.isatty() if live is None else live
        return LiveProgress() if live else Progress()

    def start(self, total: int | None, done: int) -> None:
        self.total, self.done, self.tokens = total, done, 0
        self.by_stage: Counter[str] = Counter()
        self.kept = self.rejected = 0
        self.started = self._last_log = time.monotonic()
        self._done_at_start = done

    def set_total(self, total: int) -> None:
        """The work items the run is to have done, counted after it started (from another thread)."""
        self.total = total

    def advance(self, records: list[Record]) -> None:
        """One work item finished, as ``records``."""
        self.done += 1
        self.tokens += sum(r.get("completion_tokens") or 0 for r in records)
        self.by_stage.update(r.get("stage") or "seed" for r in records)
        self._show()

    def committed(self, kept: int, rejected: int) -> None:
        self.kept += kept
        self.rejected += rejected
        self._show()

    def _show(self) -> None:
        if time.monotonic() - self._last_log >= LOG_EVERY_S:
            self._last_log = time.monotonic()
            log.info(self.line())

    def stages(self) -> str:
        committed = self.kept + self.rejected
        dropped = f", {self.rejected / committed:.0%} dropped" if committed else ""
        return ", ".join(f"{stage} {count:,}" for stage, count in self.by_stage.items()) + dropped

    def tokens_per_s(self) -> str:
        return f"{self.tokens / max(time.monotonic() - self.started, 1e-9):,.0f} tok/s"

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (self.done - self._done_at_start) / elapsed
        of_total = f"/{self.total:,}" if self.total else ""
        eta = ""
        if self.total and rate > 0:
            eta = f", ETA {max(self.total - self.done, 0) / rate:,.0f} s"
        return f"{self.done:,}{of_total} work items ({self.stages()}), {self.tokens_per_s()}{eta}"

    def close(self) -> None:
        log.info("done: %s", self.line())


class LiveProgress(Progress):
    def start(self, total: int | None, done: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        super().start(total, done)
        self._bar = RichProgress(TextColumn("[bold]sdg"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stages]}"), TextColumn("{task.fields[rate]}"),
                                 TimeRemainingColumn(), transient=False)
        self._task = self._bar.add_task("run", total=total, completed=done, stages="", rate="")
        self._bar.start()

    def set_total(self, total: int) -> None:
        super().set_total(total)
        self._bar.update(self._task, total=total)  # rich's update holds its own lock

    def _show(self) -> None:
        self._bar.update(self._task, completed=self.done, stages=self.stages(), rate=self.tokens_per_s())

    def close(self) -> None:
        self._bar.stop()
