"""Training-free (inference-time) alignment, survey section 4.3: the model's weights never change.

- :func:`best_of_n`, :func:`rejection_sample`: draw candidates, keep what the reward ranks highest.
- :func:`optimize_noise`: gradient ascent on a differentiable reward with respect to x_T through the
  sampler (gradient checkpointing per step), kept on the Gaussian shell by a chi^2 or norm regulariser.
- :func:`optimize_prompt`: search over rewrites of the prompt (templates, emphasis, an optional local LM).
- :func:`attend_and_excite`: Attend-and-Excite latent updates from cross-attention maps (diffusers
  attention processors on the image adapter's UNet).

Every method counts the model evaluations it spends (denoiser forwards x rows, see
:mod:`diffalign.inference.sampler`), so it can be compared with training-based methods at equal compute.
"""
from diffalign.inference.attend_excite import (AttendExciteConfig, AttendExciteResult, attend_and_excite,
                                               attention_store, subject_token_indices)
from diffalign.inference.best_of_n import SelectionResult, best_of_n, candidate_seed, rejection_sample
from diffalign.inference.methods import DEFAULT_BUDGETS, METHODS, MethodOutput, run_method
from diffalign.inference.noise_opt import (NoiseOptConfig, NoiseOptResult, chi2_regularizer, norm_regularizer,
                                           optimize_noise, shell_ratio)
from diffalign.inference.prompt_opt import (LMRewriter, PromptOptConfig, PromptOptResult, optimize_prompt,
                                            rewrite_candidates)
from diffalign.inference.rewards import make_reward
from diffalign.inference.sampler import (EvalCounter, count_evaluations, decode_with_grad, draw_noise, sample_chain,
                                         sample_images, seeded_generators)
from diffalign.inference.surrogates import shapes_surrogate

__all__ = ["best_of_n", "rejection_sample", "candidate_seed", "SelectionResult", "optimize_noise", "NoiseOptConfig",
           "NoiseOptResult", "shell_ratio", "chi2_regularizer", "norm_regularizer", "optimize_prompt",
           "PromptOptConfig", "PromptOptResult", "rewrite_candidates", "LMRewriter", "attend_and_excite",
           "AttendExciteConfig", "AttendExciteResult", "attention_store", "subject_token_indices", "make_reward",
           "EvalCounter", "count_evaluations", "decode_with_grad", "draw_noise", "sample_chain",
           "sample_images", "seeded_generators", "shapes_surrogate", "METHODS", "DEFAULT_BUDGETS", "MethodOutput",
           "run_method"]
