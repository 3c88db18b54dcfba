"""Sampling settings, with vLLM's own ``SamplingParams`` names and meanings.

Declared here rather than imported from vLLM so a spec is checked (``sdg validate``) on a machine
without vLLM, and a misspelt field is refused instead of silently ignored. ``None`` means "vLLM's
default".
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
