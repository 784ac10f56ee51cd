"""The denoising MDP: step rules with log-probs (steps.py) and the guided policy / rollouts (trajectory.py)."""
from diffalign.mdp.steps import STEP_RULES, DDIMRule, DDPMRule, FlowODERule, FlowSDERule, StepRule, make_step_rule
from diffalign.mdp.trajectory import DiffusionPolicy, Trajectory
from diffalign.mdp.schedules import EDMSchedule, VPSchedule
from diffalign.mdp.steps import EDMEulerRule, EDMRule, VPRule

__all__ = ["StepRule", "DDIMRule", "DDPMRule", "FlowSDERule", "FlowODERule", "make_step_rule", "STEP_RULES",
           "DiffusionPolicy", "Trajectory", "VPSchedule", "EDMSchedule", "VPRule", "EDMRule", "EDMEulerRule"]
