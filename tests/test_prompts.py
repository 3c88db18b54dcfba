"""Prompt rendering: the sandbox's bounds on work and size, and the templates it still renders.

Each bomb below is small enough that the unbounded sandbox finishes it (in seconds and tens of
MB) or is stopped by the timeout, so the test fails without the bounds instead of exhausting
the machine.
"""

from __future__ import annotations

import pytest

from gen.prompts import MAX_CHARS, PROMPTS_DIR, PromptTemplate, TemplateTooCostly

BOMBS = {
    "string_times_int": "{{ 'a' * 10**8 }}",
    "list_times_int": "{{ ([1] * 10**7) | length }}",
    "nested_ranges": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "nested_string_loops": "{% set s = 'ab' * 50000 %}{% for c in s %}{% for d in s %}{% endfor %}{% endfor %}",
    "huge_power": "{{ (10 ** 1000000) > 0 }}",
    "doubling_concat": "{% set ns = namespace(s='ab') %}{% for i in range(22) %}{% set ns.s = ns.s ~ ns.s %}"
                       "{% endfor %}{{ ns.s | length }}",
    "doubling_plus": "{% set ns = namespace(s='ab') %}{% for i in range(22) %}{% set ns.s = ns.s + ns.s %}"
                     "{% endfor %}{{ ns.s | length }}",
    "center_filter": "{{ 'a' | center(100000000) }}",
    "str_method_width": "{{ 'a'.ljust(100000000) }}",
    "format_width": "{{ '{:>100000000}'.format(1) }}",
    "printf_width": "{{ '%0100000000d' % 1 }}",
    "format_filter_width": "{{ '%100000000s' | format('x') }}",
    "join_filter": "{{ (['a' * 1000] * 2000) | join }}",
    "replace_filter": "{{ ('a' * 1000) | replace('a', 'b' * 2000) }}",
    "output_length": "{% for i in range(3000) %}{{ 'x' * 1000 }}{% endfor %}",
    "list_of_big_strings": "{{ (['a' * 1000000] * 1000) | length }}",
    "str_join": "{{ ''.join(['a' * 1000] * 2000) }}",
    "many_big_values": "{% set big = 'a' * 1000000 %}{{ range(20000) | map('string') | map('center', 1000000) | list | length }}",
    "slow_steps": "{% set big = 'a b ' * 250000 %}{% for i in range(19000) %}{% if big | wordcount %}{% endif %}{% endfor %}",
    "exponential_macro": "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(25) }}",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(BOMBS))
def test_a_template_over_the_bounds_is_refused_naming_it(name):
    with pytest.raises(TemplateTooCostly, match=f"template {name!r}: "):
        PromptTemplate.from_text(name, BOMBS[name]).render()


def test_lipsum_is_not_offered():
    with pytest.raises(Exception, match="lipsum"):
        PromptTemplate.from_text("t", "{{ lipsum(n=100000) }}").render()


def test_templates_within_the_bounds_render_as_before():
    text = ("{% for item in items %}{{ loop.index }}. {{ item ~ '!' }}{% if not loop.last %}, {% endif %}"
            "{% endfor %} | {{ '%05.1f' % 3.14159 }} {{ '{:>6}'.format('ab') }} {{ 'a' | center(5) }}"
            " {{ 2 ** 10 }} {{ ['x', 'y'] | join('-') }} {{ 'abc' | replace('b', 'BB') }}"
            " {{ range(3) | list | length }} {{ items | length }} {{ 'ab' * 3 }}")
    rendered = PromptTemplate.from_text("t", text).render(items=["a", "b", "c"])
    assert rendered == "1. a!, 2. b!, 3. c! | 003.1     ab   a   1024 x-y aBBc 3 3 ababab"
    # just under each bound is fine
    assert len(PromptTemplate.from_text("t", "{{ 'a' * n }}").render(n=MAX_CHARS)) == MAX_CHARS


def test_every_render_has_its_own_budget():
    template = PromptTemplate.from_text("t", "{% for i in range(15000) %}{% endfor %}done")
    assert [template.render() for _ in range(3)] == ["done"] * 3


def test_shipped_prompts_are_the_ones_the_stages_declare():
    from gen.stages import STAGES

    declared = {name for stage in STAGES.values() for name in stage.prompts}
    assert declared == {path.stem for path in PROMPTS_DIR.glob("*.j2")}
