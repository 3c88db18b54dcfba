"""Sampling settings, with vLLM's own ``SamplingParams`` names and meanings.

Declared here rather than imported from vLLM so a spec is checked (``sdg validate``) on a machine
without vLLM, and a misspelt field is refused instead of silently ignored. ``None`` means "vLLM's
default".
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


class StructuredOutputs(BaseModel):
    """vLLM 0.28's ``StructuredOutputsParams``, by its own names: exactly one constraint (a JSON
    schema, a regex, a choice of strings, a grammar, any JSON object, a structural tag) that every
    token the model samples must keep satisfiable, so what it returns parses. The engine's
    backend applies it (sdg's engines: xgrammar, see ``cluster/engine.py``; vLLM's CPU model
    runner applies its token masks)."""

    # vLLM's ``json`` would shadow pydantic's BaseModel.json: held as json_schema, read and
    # written as ``json``.
    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)

    json_schema: dict[str, Any] | str | None = Field(None, alias="json")
    """A JSON schema (a mapping, or its JSON text)."""
    regex: str | None = Field(None, min_length=1)
    choice: list[str] | None = Field(None, min_length=1)
    grammar: str | None = Field(None, min_length=1)
    """An EBNF (or Lark, for guidance) grammar."""
    json_object: Literal[True] | None = None
    structural_tag: str | None = None
    # vLLM 0.28's request also has disable_any_whitespace, disable_additional_properties and
    # whitespace_pattern, which its backends ignore (they read the engine's config): not offered
    # here, so that no setting is accepted and silently ignored. sdg's engines write compact JSON.

    @model_validator(mode="after")
    def _one_constraint(self) -> StructuredOutputs:
        # vLLM refuses none or several per request, which would only show once the model had loaded.
        given = [name for name in CONSTRAINTS if self.model_dump(exclude_none=True).get(name) is not None]
        if len(given) != 1:
            raise ValueError(f"exactly one of {', '.join(CONSTRAINTS)} (got {', '.join(given) or 'none'})")
        if isinstance(self.json_schema, str):
            try:
                parsed = json.loads(self.json_schema)
            except ValueError as exc:
                raise ValueError(f"json: not a JSON schema: {exc}") from None
            if not isinstance(parsed, dict):
                raise ValueError("json: a JSON schema is an object")
        return self


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The ranges are vLLM's own (SamplingParams._verify_args): out of them, vLLM refuses every
    # request, which would only show once the model had loaded.
    n: int | None = Field(None, ge=1, description="Outputs per prompt.")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, ge=1)
    min_tokens: int | None = Field(None, ge=0)
    seed: int | None = None
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    structured_outputs: StructuredOutputs | None = None

    @model_validator(mode="after")
    def _min_tokens_within_max(self) -> Sampling:
        if self.min_tokens is not None and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        return self

    def params(self) -> dict[str, Any]:
        """The set fields, as keyword arguments for ``vllm.SamplingParams``."""
        return self.model_dump(exclude_none=True)

    def merged(self, override: Sampling | None) -> dict[str, Any]:
        """These settings with ``override``'s set fields on top (a stage's own sampling)."""
        return {**self.params(), **(override.params() if override else {})}
