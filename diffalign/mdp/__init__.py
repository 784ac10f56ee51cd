"""The denoising MDP: step rules with log-probs (steps.py) over diffusers schedulers or the VP / EDM schedules
(diffalign/schedules.py, re-exported here), the guided policy and its rollouts (trajectory.py), and the one
sampling chain and noise draw every caller uses (chain.py)."""
from diffalign.mdp.chain import ChainResult, draw_noise, draw_step_noise, run_chain
from diffalign.schedules import EDMSchedule, VPSchedule
from diffalign.mdp.steps import (STEP_RULES, DDIMRule, DDPMRule, EDMEulerRule, EDMRule, FlowODERule, FlowSDERule,
                                 StepRule, VPRule, make_step_rule)
from diffalign.mdp.trajectory import DiffusionPolicy, Trajectory

__all__ = ["StepRule", "DDIMRule", "DDPMRule", "FlowSDERule", "FlowODERule", "VPRule", "EDMRule", "EDMEulerRule",
           "make_step_rule", "STEP_RULES", "VPSchedule", "EDMSchedule", "DiffusionPolicy", "Trajectory", "run_chain",
           "draw_noise", "draw_step_noise", "ChainResult"]
