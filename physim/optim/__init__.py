"""Optimizers for differentiable physim problems.

Every optimizer works on a *problem*: a :class:`SceneProblem` or any object with ``horizon``,
``action_dim``, ``action_low``/``action_high``, ``sim_steps``, ``loss(actions)`` and
``loss_and_grad(actions)`` (the Gymnasium envs of :mod:`physim.envs` expose these on
``env.unwrapped``; passing the env itself works too).

* :func:`adam`: gradient descent (Adam, projected onto the bounds) with learning-rate schedules,
  gradient clipping and temporal expansion for long horizons;
* :func:`cmaes`: CMA-ES (gradient free), optionally through a few keyframes;
* :func:`hybrid`: CMA-ES, then Adam from its best sequence;
* :func:`random_search`: uniform random search inside the bounds (the baseline);
* :mod:`physim.optim.parallel`: a population's rollouts on worker processes or Ray actors;
* :func:`train_policy`: a closed-loop MLP policy trained through the simulator;
* :func:`identify`: system identification of a material parameter;
* :func:`plot_losses`: loss curves as PNG.
"""

from .adam import adam
from .calibration import calibrate
from .cmaes import cmaes, hybrid, keyframe_matrix
from .plot import plot_losses
from .policy import MLPPolicy, train_policy
from .problem import Evaluation, SceneProblem
from .random_search import random_search
from .result import OptimResult
from .sysid import SysIdResult, identify

__all__ = [
    "SceneProblem",
    "Evaluation",
    "OptimResult",
    "adam",
    "cmaes",
    "hybrid",
    "random_search",
    "keyframe_matrix",
    "train_policy",
    "MLPPolicy",
    "identify",
    "calibrate",
    "SysIdResult",
    "plot_losses",
]
