"""What the generation-method stages share: how their sampling settings stack, and how a failed
completion is recognised."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gen.sampling import Sampling

if TYPE_CHECKING:
    from cluster.engine import Completion
    from gen.stages.base import StageContext

FAILED_FINISH_REASONS = ("prompt_too_long", "error")
"""Per-request failures reported by the engine: the record is dropped under this reason."""


def layered_sampling(ctx: StageContext, method_defaults: Sampling, override: Sampling | None) -> dict[str, Any]:
    """The spec's ``sampling``, then the method's published settings, then the stage's own override.

    A method's decoding is part of the method (Self-Instruct's stop at item 16, Magpie's greedy
    answers), so it wins over the spec-wide section; a field set on the stage wins over both.
    """
    return {**ctx.sampling.params(), **method_defaults.params(), **(override.params() if override else {})}


def failure(completion: Completion) -> str | None:
    """The drop reason of an engine-level failure, or None when the model produced text."""
    return completion.finish_reason if completion.finish_reason in FAILED_FINISH_REASONS else None
