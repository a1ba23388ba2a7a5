"""The task of a run: :func:`task_for` maps a config's task id and objective to its :class:`Task`."""
from __future__ import annotations

from heterolora_core.tasks import SFT_TASK, check_objective
from heterolora_core.tasks.base import Task
from heterolora_core.tasks.classification import ClassificationTask
from heterolora_core.tasks.lm import GlueInstructionTask, SftTask
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import Objective


def task_for(config: RunConfig) -> Task:
    """The task of ``config`` (normalised); ValueError with one line for a refused task/objective pair."""
    objective = check_objective(config.task, config.objective)
    if objective is Objective.CLASSIFY:
        return ClassificationTask()
    if config.task == SFT_TASK:
        return SftTask()
    return GlueInstructionTask(config.task)
