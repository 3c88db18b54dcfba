"""Prompt templates: Jinja files shipped in ``gen/prompts/``, each overridable from the spec.

Templates are rendered in Jinja's sandbox: a spec (and a template it points to) is data, never
code. Every record made through a template carries its name and hash, so a dataset says exactly
which prompt wording produced it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

PROMPTS_DIR = Path(__file__).parent / "prompts"

_ENV = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False
)


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
        return _compile(self.source).render(**variables)


@lru_cache(maxsize=256)
def _load_cached(name: str, path: str) -> PromptTemplate:
    try:
        source = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise FileNotFoundError(f"prompt template {name!r}: cannot read {path}: {exc}") from exc
    return PromptTemplate.from_text(name, source)


@lru_cache(maxsize=256)
def _compile(source: str):
    return _ENV.from_string(source)
