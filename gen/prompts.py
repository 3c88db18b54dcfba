"""Prompt templates: Jinja files shipped in ``gen/prompts/``, each overridable from the spec.

Templates are rendered in Jinja's sandbox: a spec (and a template it points to) is data, never
code. Every record made through a template carries its name and hash, so a dataset says exactly
which prompt wording produced it.

The sandbox stops a template from reaching Python, not from using the CPU: ``{{ 'a' * 10**9 }}``
or two nested loops of 100,000 are legal Jinja, and a render runs on the event loop that feeds
the engines. So every render here is bounded (:class:`BoundedSandbox`): at most ``MAX_STEPS``
steps (calls, filters, attribute and item lookups, operators, loop iterations), no string, list
or output longer than ``MAX_CHARS``, at most ``MAX_CHARS_MADE`` characters or items made in all,
and, for steps that are slow one by one (a filter over a long text), at most ``MAX_CPU_SECONDS``.
A template over a bound raises :class:`TemplateTooCostly` naming the template, instead of
stalling or exhausting the run.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import string
import time
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg
from jinja2.visitor import NodeTransformer

PROMPTS_DIR = Path(__file__).parent / "prompts"

# A prompt is read by a model whose context is at most a few hundred thousand tokens; 1M characters
# is beyond any of them, so no legitimate template makes a longer string, list or output.
MAX_CHARS = 1_000_000
# The shipped prompts take 20-30 steps, a P3 template a few; spending 20,000 takes 0.01-0.23
# CPU-seconds however they are spent (benchmarks/bench_template_bounds.py: macro calls are the
# dearest), so no render within the other bounds holds the event loop longer than that.
MAX_STEPS = 20_000
MAX_INT_BITS = 10_000  # integers a template computes (``10**10**10`` would never finish)
# What a render may allocate in all: ten times its largest value, so twenty thousand 1 MB strings
# (``big_list | map('upper') | list``) are refused after ten, not after 20 GB.
MAX_CHARS_MADE = 10 * MAX_CHARS
# A backstop for steps that are each slow (``text | wordcount`` on a 1 MB text, in a loop): no
# template within the other bounds comes near it (see MAX_STEPS). CPU time of this thread, so a
# busy machine does not make a render fail.
MAX_CPU_SECONDS = 1.0
_CPU_CHECK_EVERY = 16  # steps between reads of the thread's CPU clock (a system call, ~1.5 us)

# Methods and filters whose integer arguments size what they allocate (str.center(10**9)).
_SIZED_BY_INT_ARGUMENT = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "indent", "batch", "slice"})
_PRINTF_WIDTH = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


class TemplateTooCostly(SecurityError):
    """A template that exceeds the render bounds (steps or size)."""


@dataclass
class _Budget:
    steps_left: int = MAX_STEPS
    chars_left: int = MAX_CHARS_MADE
    cpu_deadline: float = field(default_factory=lambda: time.thread_time() + MAX_CPU_SECONDS)


# The steps left to the render in progress; None while Jinja folds constants at compile time.
_budget: ContextVar[_Budget | None] = ContextVar("sdg_template_budget", default=None)


def _spend(steps: int = 1) -> None:
    budget = _budget.get()
    if budget is None:
        return
    budget.steps_left -= steps
    if budget.steps_left < 0:
        raise TemplateTooCostly(f"more than {MAX_STEPS:,} steps (calls, lookups, operators, loop iterations)")
    if budget.steps_left % _CPU_CHECK_EVERY == 0 and time.thread_time() > budget.cpu_deadline:
        raise TemplateTooCostly(f"more than {MAX_CPU_SECONDS:g} CPU-second(s) of rendering")


def _check_size(value: Any) -> Any:
    """``value``, made by the template: refused when too large, counted toward what it made."""
    if isinstance(value, str | bytes | list | tuple | dict | set | frozenset):
        if len(value) > MAX_CHARS:
            raise TemplateTooCostly(f"makes a value of {len(value):,} characters or items (at most {MAX_CHARS:,})")
        budget = _budget.get()
        if budget is not None:
            budget.chars_left -= len(value)
            if budget.chars_left < 0:
                raise TemplateTooCostly(f"makes more than {MAX_CHARS_MADE:,} characters or items in all")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise TemplateTooCostly(f"makes an integer of {value.bit_length():,} bits (at most {MAX_INT_BITS:,})")
    return value


def _check_printf(fmt: str) -> None:
    for width, precision in _PRINTF_WIDTH.findall(fmt):
        for number in (width, precision):
            if number == "*" or (number and int(number) > MAX_CHARS):
                raise TemplateTooCostly(f"a %-format width or precision of {number} (at most {MAX_CHARS:,})")


def _check_str_format(fmt: str) -> None:
    for _, _, spec, _ in string.Formatter().parse(fmt):
        if spec and "{" in spec:
            raise TemplateTooCostly("a format spec computed from an argument ({...} inside {:...})")
        if spec and any(int(number) > MAX_CHARS for number in re.findall(r"\d+", spec)):
            raise TemplateTooCostly(f"a format width or precision above {MAX_CHARS:,}")


def _check_growth(name: str, owner: Any, args: tuple, kwargs: Mapping[str, Any]) -> None:
    """Refuse a call to a known growing method or filter before it allocates."""
    if name in _SIZED_BY_INT_ARGUMENT:
        for value in (*args, *kwargs.values()):
            if isinstance(value, int) and value > MAX_CHARS:
                raise TemplateTooCostly(f"{name}({value}): an argument above {MAX_CHARS:,}")
    elif name == "replace" and isinstance(owner, str) and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
        old, new = args[0], args[1]
        growth = (owner.count(old) if old else len(owner) + 1) * (len(new) - len(old))
        _check_size_of(len(owner) + max(growth, 0))
    elif name == "join":  # str.join(items) or items | join
        items = args[0] if isinstance(owner, str) and args else owner
        if isinstance(items, list | tuple):
            _check_size_of(_weight(items))
    elif name == "format" and isinstance(owner, str):
        _check_printf(owner)


def _weight(value: Any) -> int:
    """Characters or items a value holds, counting the strings a list holds (``[s] * n``)."""
    if isinstance(value, list | tuple):
        return len(value) + sum(len(item) for item in value if isinstance(item, str | bytes))
    return len(value)


def _check_size_of(length: int) -> None:
    if length > MAX_CHARS:
        raise TemplateTooCostly(f"would make a value of {length:,} characters (at most {MAX_CHARS:,})")


def _bounded_filter(name: str, func: Any) -> Any:
    takes_context = _PassArg.from_obj(func) is not None  # context / eval context / environment first

    @functools.wraps(func)  # keeps jinja_pass_arg, so Jinja passes the same first argument
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _spend()
        user_args = args[1:] if takes_context else args
        if user_args:
            _check_growth(name, user_args[0], user_args[1:], kwargs)
        return _check_size(func(*args, **kwargs))

    return bounded


class _BoundLoopsAndConcat(NodeTransformer):
    """Loop iterations and ``~`` have no sandbox hook: route them through ``environment.call``."""

    def visit_For(self, node: nodes.For) -> nodes.For:
        node = self.generic_visit(node)
        node.iter = _environment_call("counted_iter", node.iter)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Call:
        return _environment_call("checked", self.generic_visit(node))


def _environment_call(method: str, argument: nodes.Expr) -> nodes.Call:
    return nodes.Call(nodes.EnvironmentAttribute(method, lineno=argument.lineno), [argument], [], None, None,
                      lineno=argument.lineno)


class _BoundedTemplate(Template):
    def render(self, *args: Any, **kwargs: Any) -> str:
        """Render within the bounds: ``MAX_STEPS`` steps, at most ``MAX_CHARS`` of output."""
        token = _budget.set(_Budget())
        try:
            chunks, size = [], 0
            for chunk in self.generate(*args, **kwargs):
                size += len(chunk)
                if size > MAX_CHARS:
                    raise TemplateTooCostly(f"renders more than {MAX_CHARS:,} characters")
                chunks.append(chunk)
            return "".join(chunks)
        finally:
            _budget.reset(token)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with a bound on the work and the memory of each render."""

    template_class = _BoundedTemplate
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.globals["range"] = self.bounded_range
        del self.globals["lipsum"]  # lipsum(n=10**5) writes 100,000 paragraphs
        self.filters = {name: _bounded_filter(name, func) for name, func in self.filters.items()}

    def make_globals(self, d: dict[str, Any] | None) -> dict[str, Any]:
        """A template's globals as one dict, where Jinja's ChainMap over the environment's is
        copied twice per render (a third of a short P3 template's render); this environment's
        globals are fixed once it is built."""
        return {**self.globals, **(d or {})}

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = _BoundLoopsAndConcat().visit(super()._parse(source, name, filename))
        tree.set_environment(self)
        return tree

    @staticmethod
    def bounded_range(*args: int) -> range:
        numbers = range(*args)
        if len(numbers) > MAX_STEPS:  # more than a render may iterate (loops count each number)
            raise TemplateTooCostly(f"range of {len(numbers):,} numbers (at most {MAX_STEPS:,})")
        return numbers

    @staticmethod
    def counted_iter(iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            _spend()
            yield item

    @staticmethod
    def checked(value: Any) -> Any:
        return _check_size(value)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _spend()
        sequence = (str, bytes, list, tuple)
        if operator == "*":
            for items, times in ((left, right), (right, left)):
                if isinstance(items, sequence) and isinstance(times, int):
                    _check_size_of(_weight(items) * times)
            if isinstance(left, int) and isinstance(right, int):
                _check_bits(left.bit_length() + right.bit_length())
        elif operator == "+" and isinstance(left, sequence) and isinstance(right, sequence):
            _check_size_of(_weight(left) + _weight(right))
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            _check_bits(right * math.log2(abs(left)))
        elif operator == "%" and isinstance(left, str):
            _check_printf(left)
        return _check_size(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - Jinja's signature
        _spend()
        wrapped = getattr(__obj, "__wrapped__", __obj)  # str.format comes wrapped by the sandbox
        owner = getattr(wrapped, "__self__", None)
        if isinstance(owner, str) and getattr(wrapped, "__name__", "") in ("format", "format_map"):
            _check_str_format(owner)
        elif owner is not None:
            _check_growth(getattr(wrapped, "__name__", ""), owner, args, kwargs)
        return _check_size(super().call(__context, __obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        _spend()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _spend()
        return super().getitem(obj, argument)


def _check_bits(bits: float) -> None:
    if bits > MAX_INT_BITS:
        raise TemplateTooCostly(f"would make an integer of about {bits:,.0f} bits (at most {MAX_INT_BITS:,})")


_ENV = BoundedSandbox(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    source: str
    sha256: str

    @classmethod
    def from_text(cls, name: str, source: str) -> PromptTemplate:
        return cls(name, source, hashlib.sha256(source.encode("utf-8")).hexdigest()[:16])

    @classmethod
    def load(cls, name: str, override: str | Path | None = None) -> PromptTemplate:
        path = Path(override) if override else PROMPTS_DIR / f"{name}.j2"
        return _load_cached(name, str(path))

    def render(self, **variables: Any) -> str:
        try:
            return _compile(self.source).render(**variables)
        except TemplateTooCostly as exc:
            raise TemplateTooCostly(f"template {self.name!r}: {exc}") from None


def parse(source: str) -> nodes.Template:
    """The template's syntax tree; :class:`TemplateSyntaxError` names the line of a mistake."""
    return _ENV.parse(source)


def check_renders(name: str, path: str, variables: dict[str, Any]) -> None:
    """Refuse a template file that does not compile, names a variable its stage does not pass
    (``variables``, sample values), or fails to render with them. ``ValueError`` names the file."""
    try:
        source = Path(path).read_text(encoding="utf-8")
        undeclared = meta.find_undeclared_variables(parse(source)) - variables.keys()
        if undeclared:
            raise ValueError(f"uses undefined variable(s) {', '.join(sorted(undeclared))} "
                             f"({name} is given: {', '.join(sorted(variables))})")
        PromptTemplate.from_text(name, source).render(**variables)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    except TemplateSyntaxError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: {exc.message}") from None
    except (TemplateError, ValueError, TypeError, LookupError, ArithmeticError) as exc:
        raise ValueError(f"{path}: {exc}") from None


@lru_cache(maxsize=256)
def _load_cached(name: str, path: str) -> PromptTemplate:
    try:
        source = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise FileNotFoundError(f"prompt template {name!r}: cannot read {path}: {exc}") from exc
    return PromptTemplate.from_text(name, source)


@lru_cache(maxsize=256)
def _compile(source: str) -> Template:
    return _ENV.from_string(source)
