"""The denoising MDP: step rules with log-probs (steps.py), the guided policy and its rollouts
(trajectory.py), and the one sampling chain and noise draw every caller uses (chain.py)."""
from diffalign.mdp.chain import ChainResult, draw_noise, draw_step_noise, run_chain
from diffalign.mdp.steps import STEP_RULES, DDIMRule, DDPMRule, FlowODERule, FlowSDERule, StepRule, make_step_rule
from diffalign.mdp.trajectory import DiffusionPolicy, Trajectory

__all__ = ["StepRule", "DDIMRule", "DDPMRule", "FlowSDERule", "FlowODERule", "make_step_rule", "STEP_RULES",
           "DiffusionPolicy", "Trajectory", "run_chain", "draw_noise", "draw_step_noise", "ChainResult"]
