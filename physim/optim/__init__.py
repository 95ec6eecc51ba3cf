"""Trajectory optimizers over differentiable problems (see :mod:`physim.optim.problem`)."""

from .problem import Evaluation, SceneProblem

__all__ = ["SceneProblem", "Evaluation"]
