"""How long a template may hold the event loop: the CPU time of templates that spend the whole
step budget, each way a template can spend it, and what the bounds cost a shipped prompt against
Jinja's plain immutable sandbox, measured in the same run.

    .venv/bin/python benchmarks/bench_template_bounds.py
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gen.prompts import PROMPTS_DIR, PromptTemplate, TemplateTooCostly
from gen.stages import STAGES

# Templates that run until the budget stops them, one per kind of step.
LOOPS = "{{% for i in range(10000) %}}{{% for j in range(10000) %}}{}{{% endfor %}}{{% endfor %}}"
SPENDERS = {
    "loop_iterations": "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
    "loop_with_output": "{% for i in range(10000) %}{% for j in range(10000) %}.{% endfor %}{% endfor %}",
    "macro_calls": "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    "attribute_lookups": LOOPS.format("{{ row.a.b.c.d.e.f.g }}"),
    "filters": LOOPS.format("{{ row.a.b | string | upper | lower | trim | upper | lower }}"),
    "operators": LOOPS.format("{{ row.a.b.c.d.e.f.g * 2 * 1 * 1 * 1 * 1 }}"),
    "method_calls": LOOPS.format("{{ row.a.b.c.d.e.f.g.upper().lower().upper().lower() }}"),
    # each step slow (a filter over 1M characters): stopped by the CPU-time backstop instead
    "slow_steps": "{% set big = 'a b ' * 250000 %}" + LOOPS.format("{% if big | wordcount %}{% endif %}"),
}
ROW = {"a": {"b": {"c": {"d": {"e": {"f": {"g": "x"}}}}}}}


def best_of(runs: int, work) -> float:
    times = []
    for _ in range(runs):
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return min(times)


def spend(source: str) -> float:
    template = PromptTemplate.from_text("spender", source)

    def render() -> None:
        try:
            template.render(row=ROW)
        except TemplateTooCostly:
            return
        raise AssertionError("the budget did not stop it")

    return best_of(3, render)


def main() -> None:
    results: dict[str, object] = {"cpu_seconds_to_exhaust_budget": {name: round(spend(s), 3) for name, s in SPENDERS.items()}}
    plain = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
    per_render = {}
    for stage in STAGES.values():
        for name, variables in stage.prompts.items():
            source = (PROMPTS_DIR / f"{name}.j2").read_text()
            bounded, unbounded = PromptTemplate.from_text(name, source), plain.from_string(source)
            assert bounded.render(**variables) == unbounded.render(**variables)
            times = [(best_of(5, lambda: [bounded.render(**variables) for _ in range(2000)]),
                      best_of(5, lambda: [unbounded.render(**variables) for _ in range(2000)])) for _ in range(3)]
            per_render[name] = {"bounded_us": round(statistics.median(t[0] for t in times) / 2000 * 1e6, 1),
                                "plain_sandbox_us": round(statistics.median(t[1] for t in times) / 2000 * 1e6, 1),
                                "ratio": round(statistics.median(t[0] / t[1] for t in times), 2)}
    results["shipped_prompt_render"] = per_render
    print(json.dumps(results, indent=2))
    out = Path(__file__).parent / "results" / "template_bounds.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
