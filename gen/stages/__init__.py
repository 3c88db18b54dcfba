"""Generation stages. To add one: write its module (a ``StageConfig`` subclass with a
``type: Literal[...]`` and a ``Stage`` subclass), then list it in ``STAGES`` below."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from gen.stages.base import GroupStage, SourceStage, Stage, StageConfig, StageContext, WorkItem
from gen.stages.evol_instruct import EvolInstruct, EvolInstructConfig
from gen.stages.judge import Judge, JudgeConfig
from gen.stages.magpie import Magpie, MagpieConfig
from gen.stages.pairs import Pairs, PairsConfig
from gen.stages.respond import Respond, RespondConfig
from gen.stages.self_chat import SelfChat, SelfChatConfig
from gen.stages.self_instruct import SelfInstruct, SelfInstructConfig
from gen.stages.template import Template, TemplateConfig

STAGES: dict[type[StageConfig], type[Stage]] = {
    RespondConfig: Respond,
    SelfInstructConfig: SelfInstruct,
    EvolInstructConfig: EvolInstruct,
    SelfChatConfig: SelfChat,
    MagpieConfig: Magpie,
    TemplateConfig: Template,
    JudgeConfig: Judge,
    PairsConfig: Pairs,
}

StageSpec = Annotated[Union[tuple(STAGES)], Field(discriminator="type")]  # noqa: UP007


def build_stage(config: StageConfig, ctx: StageContext) -> Stage:
    return STAGES[type(config)](config, ctx)


__all__ = ["STAGES", "GroupStage", "SourceStage", "Stage", "StageConfig", "StageContext", "StageSpec", "WorkItem",
           "build_stage"]
