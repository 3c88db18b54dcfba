"""The report's plots, drawn with matplotlib's object API (no pyplot: no global state, no display)."""

from __future__ import annotations

import io
from collections.abc import Callable

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gen.report.measures import Measures

WIDTH, HEIGHT, DPI = 7.5, 3.2, 100
ROUGE_BINS = [i / 20 for i in range(21)]


def _figure(axes: int = 1, height: float = HEIGHT) -> tuple[Figure, list]:
    figure = Figure(figsize=(WIDTH, height), dpi=DPI, layout="constrained")
    return figure, [figure.add_subplot(1, axes, i + 1) for i in range(axes)]


def _counts(axis) -> None:
    """Whole numbers only on an axis of counts."""
    axis.set_major_locator(MaxNLocator(integer=True))


def _bars_height(rows: int) -> float:
    return 0.3 * rows + 1.0


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _ranked(rows: list[tuple[str, int]], xlabel: str, colour: str | list[str]) -> Figure:
    """Horizontal bars, the first row on top, each labelled with its count."""
    figure, (ax,) = _figure(height=_bars_height(len(rows)))
    bars = ax.barh([label for label, _ in rows][::-1], [count for _, count in rows][::-1],
                   color=colour[::-1] if isinstance(colour, list) else colour)
    ax.bar_label(bars, fmt="{:,.0f}", padding=3)
    ax.set_xlabel(xlabel)
    _counts(ax.xaxis)
    ax.margins(x=0.15)
    return figure


def funnel(m: Measures) -> Figure:
    return _ranked(m.funnel, "records (seed records, work items)", "#4c72b0")


def drops(m: Measures) -> Figure | None:
    if not m.drops:
        return None
    colours = {by: f"C{i}" for i, by in enumerate(sorted({by for by, _, _ in m.drops}))}
    return _ranked([(f"{by}: {reason}", count) for by, reason, count in m.drops], "records dropped",
                   [colours[by] for by, _, _ in m.drops])


def lengths(m: Measures) -> Figure:
    figure, axes = _figure(2)
    for ax, values, title in zip(axes, (m.instruction_lengths, m.response_lengths),
                                 ("instructions", "responses"), strict=True):
        ax.hist(values or [0], bins=30, color="#55a868")
        ax.set_title(f"{title} (median {_median(values)})")
        ax.set_xlabel(m.length_unit)
        ax.set_ylabel("records")
        _counts(ax.yaxis)
    return figure


def turns(m: Measures) -> Figure:
    figure, (ax,) = _figure(height=2.4)
    keys = sorted(m.turns)
    bars = ax.bar([str(k) for k in keys], [m.turns[k] for k in keys], color="#8172b2")
    ax.bar_label(bars)
    ax.set_xlabel("user turns per conversation")
    ax.margins(y=0.15)
    ax.set_ylabel("records")
    _counts(ax.yaxis)
    return figure


def languages(m: Measures) -> Figure | None:
    if not m.language_scores:
        return None
    figure, (count_ax, score_ax) = _figure(2)
    shown = list(m.language_scores.items())[:12]
    names = [lang for lang, _ in shown]
    bars = count_ax.bar(names, [len(scores) for _, scores in shown], color="#c44e52")
    count_ax.bar_label(bars)
    count_ax.set_ylabel("kept records")
    _counts(count_ax.yaxis)
    count_ax.set_title("language")
    count_ax.margins(y=0.15)
    score_ax.boxplot([scores for _, scores in shown], tick_labels=names)
    score_ax.set_ylim(0, 1.05)
    score_ax.set_title("language ID score")
    return figure


def finish_reasons(m: Measures) -> Figure | None:
    if not m.finish_reasons:
        return None
    return _ranked(m.finish_reasons.most_common(), "records ('length': the answer hit max_tokens)", "#937860")


def rouge(m: Measures) -> Figure | None:
    if not m.rouge_to_nearest:
        return None
    figure, (ax,) = _figure()
    ax.hist(m.rouge_to_nearest, bins=ROUGE_BINS, color="#4c72b0", edgecolor="white")
    ax.set_xlabel("ROUGE-L F1 with " + m.rouge_against.split(" (")[0])
    ax.set_ylabel("instructions")
    _counts(ax.yaxis)
    ax.set_xlim(0, 1)
    return figure


def verb_objects(m: Measures) -> Figure | None:
    if not m.verb_objects:
        return None
    return _ranked(m.verb_objects, "instructions (leading verb and its direct object)", "#55a868")


def engine(m: Measures) -> Figure | None:
    """Tokens/s and requests in flight per replica (each run its own line segments: a resumed run
    shows both), and records committed over time (from the journal, so also a run without engine)."""
    if not m.commits:
        return None
    figure, axes = _figure(3 if m.replicas else 1, height=HEIGHT)
    titled = [(axes[-1], "records committed")]
    if m.replicas:
        rate_ax, flight_ax = axes[:2]
        titled += [(rate_ax, "tokens/s per replica (10 s)"), (flight_ax, "requests in flight")]
        for run_index, (_, replicas) in enumerate(sorted(m.replicas.items())):
            for replica, points in sorted(replicas.items()):
                times = [at for at, _, _ in points]
                label = f"replica {replica}" if run_index == 0 else None
                rate_ax.plot(times, [rate for _, rate, _ in points], color=f"C{replica}", label=label)
                flight_ax.plot(times, [n for _, _, n in points], color=f"C{replica}", label=label)
        rate_ax.legend(fontsize=8)
    _counts(axes[-1].yaxis)
    axes[-1].step([at for at, _ in m.commits], [n for _, n in m.commits], where="post", color="black", marker=".")
    for ax, title in titled:
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("s since the first run began")
    return figure


def _median(values: list[int]) -> int | str:
    return sorted(values)[len(values) // 2] if values else "-"


FIGURES: dict[str, Callable[[Measures], Figure | None]] = {
    "funnel": funnel, "drops": drops, "lengths": lengths, "turns": turns, "languages": languages,
    "finish_reasons": finish_reasons, "rouge_l": rouge, "verb_objects": verb_objects, "engine": engine,
}


def draw(m: Measures) -> dict[str, bytes]:
    """Each figure the measures have data for, as PNG bytes, by name."""
    return {name: _png(figure) for name, make in FIGURES.items() if (figure := make(m)) is not None}
