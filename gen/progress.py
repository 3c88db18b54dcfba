"""Progress of a run: a live line on a terminal, plain periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("sdg.progress")

LOG_EVERY_S = 10.0


class Progress:
    """Records done of total, completion tokens/s and ETA."""

    @staticmethod
    def create(live: bool | None = None) -> Progress:
        live = sys.stderr.isatty() if live is None else live
        return LiveProgress() if live else Progress()

    def start(self, total: int | None, done: int) -> None:
        self.total, self.done, self.tokens = total, done, 0
        self.started = self._last_log = time.monotonic()
        self._done_at_start = done

    def advance(self, items: int, tokens: int) -> None:
        self.done += items
        self.tokens += tokens
        if time.monotonic() - self._last_log >= LOG_EVERY_S:
            self._last_log = time.monotonic()
            log.info(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (self.done - self._done_at_start) / elapsed
        of_total = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total and rate > 0:
            eta = f", ETA {max(self.total - self.done, 0) / rate:,.0f} s"
        return f"{self.done:,}{of_total} work items, {self.tokens / elapsed:,.0f} tok/s{eta}"

    def close(self) -> None:
        log.info("done: %s", self.line())


class LiveProgress(Progress):
    def start(self, total: int | None, done: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        super().start(total, done)
        self._bar = RichProgress(TextColumn("[bold]sdg"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                 transient=False)
        self._task = self._bar.add_task("run", total=total, completed=done, rate="")
        self._bar.start()

    def advance(self, items: int, tokens: int) -> None:
        self.done += items
        self.tokens += tokens
        elapsed = max(time.monotonic() - self.started, 1e-9)
        self._bar.update(self._task, advance=items, rate=f"{self.tokens / elapsed:,.0f} tok/s")

    def close(self) -> None:
        self._bar.stop()
