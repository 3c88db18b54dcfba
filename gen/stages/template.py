"""``template``: FLAN / P3-style conversion of a labelled dataset into instructions, no model needed.

Each template is one Jinja text in promptsource's shape: the instruction, ``|||``, the output,
e.g. ``Is this review positive? {{ text }} ||| {{ answer_choices[label | int] }}``. A row's
columns are the template's variables (also reachable as ``row["column name"]``), plus
``answer_choices``. Each example gets ``templates_per_example`` templates drawn by a generator
seeded from ``seed`` and the row's id, so a rerun renders exactly the same records.

Templates render in Jinja's sandbox, within the bounds of every prompt here (:mod:`gen.prompts`):
a spec is data, never code, and no template stalls the run. A template that names a missing
column, tries something the sandbox forbids, or exceeds the bounds drops that row with the error
as evidence.
"""

from __future__ import annotations

import random
from typing import Literal

from jinja2 import TemplateError, TemplateSyntaxError
from jinja2.exceptions import SecurityError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gen.prompts import PromptTemplate, TemplateTooCostly, parse
from gen.records import Record, drop
from gen.stages.base import Stage, StageConfig, StageContext

SEPARATOR = "|||"  # promptsource's separator of input and target


class RowTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    jinja: str
    """``<instruction> ||| <output>``, Jinja over the row's columns."""

    @field_validator("jinja")
    @classmethod
    def _well_formed(cls, source: str) -> str:
        if source.count(SEPARATOR) != 1:
            raise ValueError(f"a template is '<instruction> {SEPARATOR} <output>': exactly one {SEPARATOR}")
        try:
            parse(source)
        except TemplateSyntaxError as exc:
            raise ValueError(f"Jinja syntax error on line {exc.lineno}: {exc.message}") from None
        return source


class TemplateConfig(StageConfig):
    type: Literal["template"] = "template"
    templates: list[RowTemplate] = Field(min_length=1)
    """Several phrasings of the same task (P3 has ~8 per dataset, FLAN ~10)."""
    templates_per_example: int = Field(1, ge=1)
    """Templates rendered per example: FLAN draws one; set it to the number of templates for P3's
    every-template renderings."""
    answer_choices: list[str] | None = None
    """The label names, available to templates as ``answer_choices`` (promptsource's field)."""
    seed: int = 0

    @field_validator("templates")
    @classmethod
    def _distinct_names(cls, templates: list[RowTemplate]) -> list[RowTemplate]:
        names = [template.name for template in templates]
        if len(set(names)) != len(names):
            raise ValueError("template names must be distinct: each record names the template that made it")
        return templates


class Template(Stage):
    name = "template"
    uses_llm = False

    def __init__(self, config: TemplateConfig, ctx: StageContext):
        super().__init__(config, ctx)
        self.templates = [PromptTemplate.from_text(t.name, t.jinja) for t in config.templates]

    async def process(self, record: Record) -> list[Record]:
        row = (record.get("metadata") or {}).get("row")
        if not isinstance(row, dict):
            return [drop(dict(record), self.name, "no_row", hint="read the dataset with seeds.format: rows")]
        rng = random.Random(f"{self.config.seed}/{record['id']}")
        count = min(self.config.templates_per_example, len(self.templates))
        return [self.render(record, row, template) for template in rng.sample(self.templates, count)]

    def render(self, record: Record, row: dict, template: PromptTemplate) -> Record:
        def made(messages: list[dict[str, str]]) -> Record:
            return self.derive(record, messages, index=template.name, template=template)

        try:
            text = template.render(**row, row=row, answer_choices=self.config.answer_choices)
        except TemplateTooCostly as exc:
            return drop(made([]), self.name, "template_too_costly", error=str(exc))
        except SecurityError as exc:
            return drop(made([]), self.name, "template_unsafe", error=str(exc))
        except (TemplateError, TypeError, ValueError, IndexError, KeyError) as exc:
            return drop(made([]), self.name, "template_error", error=f"{type(exc).__name__}: {exc}")
        instruction, _, output = (part.strip() for part in text.partition(SEPARATOR))
        if not instruction:
            return drop(made([]), self.name, "empty_instruction")
        if not output:
            return drop(made([{"role": "user", "content": instruction}]), self.name, "empty_output")
        return made([{"role": "user", "content": instruction}, {"role": "assistant", "content": output}])
