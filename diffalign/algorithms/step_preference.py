"""Online per-step preferences (survey section 4.2): D3PO, step-aware preference optimisation (SPO), temporal discounting.

Both methods compare two transitions of the denoising MDP, a winner (x_t^w -> x_{t-1}^w) and a loser
(x_t^l -> x_{t-1}^l) at the same step index t, through the log-ratio to the frozen reference
l = log pi_theta(x_{t-1} | x_t, c) - log pi_ref(x_{t-1} | x_t, c), and minimise

    w_t * -log sigmoid(beta (l_w - l_l)),      w_t = gamma^t (temporal discounting; gamma = 1: none)

with t the sampling step index, 0 the first (noisiest) step, so gamma < 1 weighs the early steps most, as
the temporal-discounting hypothesis (earlier steps shape the preference more; survey ref. [215]) asks.

- D3PO: two trajectories from one x_T that share the first ``branch_step`` steps and then continue with
  independent noise; the preference of the final samples (a reward, or a human label file) is assigned to
  every step after the branch. The log-ratio is clipped: l = log clip(pi_theta/pi_ref, 1 - eps, 1 + eps).
- SPO: at every step, ``num_children`` children of ONE state x_t are drawn; a step-aware scorer (here the
  reward of the one-step prediction x0_hat of each child, ``predicted_x0``) picks the best as winner and the
  worst as loser (x_t^w = x_t^l), and the chain continues from a randomly chosen child. No clip by default.

Human label file (D3PO, ``preference: labels``): JSON Lines, one object per labelled pair,
    {"epoch": 0, "pair": 3, "winner": 0}
``pair`` is the global index of the pair in that epoch's rollout, ``winner`` 0 or 1 (which of the two
samples is preferred) or null (a tie: the pair is skipped). Rollouts are deterministic given the config's
seed, and the trainer writes every epoch's pairs to OUTPUT_DIR/pairs/epoch_NNNNNN/ (pair_NNNNN_0.png,
pair_NNNNN_1.png) to label; unlabelled pairs are skipped.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from diffalign.algorithms.base import Algorithm, DataPath
from diffalign.algorithms.direct_reward import predicted_x0
from diffalign.mdp.chain import draw_step_noise, run_chain
from diffalign.modalities.base import Conditions, cat_conditions

PREFERENCES = ("reward", "labels")
SCORERS = ("predicted_x0",)

__all__ = ["D3PO", "D3POConfig", "SPO", "SPOConfig", "StepPairBatch", "PairSet", "clipped_log_ratio",
           "step_preference_loss", "discount_weights", "load_labels", "collect_d3po", "collect_spo"]


# ---- pure pieces -------------------------------------------------------------------------------------
def clipped_log_ratio(log_prob: torch.Tensor, ref_log_prob: torch.Tensor, clip_range: Optional[float]) -> torch.Tensor:
    """log clip(pi_theta / pi_ref, 1 - eps, 1 + eps) from log-probs (no clip when clip_range is None)."""
    l = log_prob - ref_log_prob
    if clip_range is None:
        return l
    return l.clamp(math.log1p(-clip_range), math.log1p(clip_range))


def step_preference_loss(l_w: torch.Tensor, l_l: torch.Tensor, beta: float, weights: torch.Tensor) -> torch.Tensor:
    """Per-pair weights * -log sigmoid(beta (l_w - l_l))."""
    return -weights * F.logsigmoid(beta * (l_w - l_l))


def discount_weights(steps: torch.Tensor, gamma: float) -> torch.Tensor:
    """gamma^t for step indices t (0 = the first sampling step), float32."""
    return torch.as_tensor(gamma, dtype=torch.float64).pow(steps.double()).float()


def load_labels(path: str) -> Dict[Tuple[int, int], Optional[int]]:
    """The human label file (format in the module doc) as {(epoch, pair): winner or None}."""
    if not os.path.isfile(path):
        raise ValueError(f"config key 'algorithm.label_file': file {path!r} does not exist")
    labels: Dict[Tuple[int, int], Optional[int]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"label file {path!r}, line {n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected an object {{\"epoch\", \"pair\", \"winner\"}}, got {row!r}")
            missing = sorted({"epoch", "pair", "winner"} - set(row))
            if missing:
                raise ValueError(f"{where}: missing key(s) {missing}")
            for key in ("epoch", "pair"):
                v = row[key]
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise ValueError(f"{where}: {key!r} must be an integer >= 0, got {v!r}")
            w = row["winner"]
            if w is not None and (isinstance(w, bool) or w not in (0, 1)):
                raise ValueError(f"{where}: 'winner' must be 0, 1 or null (a tie), got {w!r}")
            key = (row["epoch"], row["pair"])
            if key in labels:
                raise ValueError(f"{where}: epoch {key[0]}, pair {key[1]} is labelled twice")
            labels[key] = w
    return labels


# ---- collection (no gradient) ------------------------------------------------------------------------------
@dataclasses.dataclass
class PairSet:
    """Per-step pairs of one rollout batch: B pairs x S steps."""

    x_t_w: torch.Tensor       # (B, S, ...)
    x_prev_w: torch.Tensor    # (B, S, ...)
    x_t_l: torch.Tensor
    x_prev_l: torch.Tensor
    steps: torch.Tensor       # (S,) long step indices
    valid: torch.Tensor       # (B, S) float: 1 where the pair has a strict preference, else 0
    x0: torch.Tensor          # (B, ...) a final sample per pair (for logging)


@dataclasses.dataclass
class StepPairBatch:
    """One training step's pairs: at steps[b], winner x_t_w[b] -> x_prev_w[b] vs loser x_t_l[b] -> x_prev_l[b]."""

    x_t_w: torch.Tensor
    x_prev_w: torch.Tensor
    x_t_l: torch.Tensor
    x_prev_l: torch.Tensor
    steps: torch.Tensor       # (B,) long
    cond: Conditions
    valid: torch.Tensor       # (B,) float


@torch.no_grad()
def collect_d3po(policy, cond: Conditions, x_T: torch.Tensor, gens: Sequence[torch.Generator], branch_step: int
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two trajectories per x_T sharing the first ``branch_step`` steps: states (B, T+1, ...) each, and steps.

    After the branch point the two copies run as one batch [a; b] whose sample j draws from gens[j] in both
    halves, so each generator gives branch a's draw, then b's, at every step."""
    shared = run_chain(policy, cond, x_T, generator=list(gens), stop=branch_step).x
    both = run_chain(policy, cat_conditions([cond, cond]), torch.cat([shared, shared]), generator=list(gens) * 2,
                     start=branch_step, record=True)
    traj = torch.stack(both.states, dim=1)
    B = x_T.shape[0]
    return traj[:B], traj[B:], torch.arange(branch_step, policy.rule.num_steps)


def pairs_from_preference(a: torch.Tensor, b: torch.Tensor, steps: torch.Tensor, a_wins: torch.Tensor,
                          valid: torch.Tensor) -> PairSet:
    """A PairSet from two trajectories (B, S+1, ...) and per-pair a_wins (B,) bool, valid (B,) bool."""
    shape = (-1,) + (1,) * (a.ndim - 1)
    pick = a_wins.reshape(shape).to(a.device)
    w, l = torch.where(pick, a, b), torch.where(pick, b, a)
    S = steps.shape[0]
    return PairSet(w[:, :-1], w[:, 1:], l[:, :-1], l[:, 1:], steps,
                   valid.float().reshape(-1, 1).expand(-1, S).to(a.device), w[:, -1])


@torch.no_grad()
def collect_spo(policy, cond: Conditions, x_T: torch.Tensor, gens: Sequence[torch.Generator], num_children: int,
                score: Callable[[torch.Tensor, Conditions], torch.Tensor]) -> PairSet:
    """SPO pairs at every step: k children of each state, best vs worst by the step-aware scorer."""
    from diffalign.modalities.base import index_conditions
    T, B, k = policy.rule.num_steps, x_T.shape[0], num_children
    rep = torch.arange(B).repeat_interleave(k)
    cond_k = index_conditions(cond, rep.to(next(iter(cond.values())).device))
    x = x_T
    rows = {"x_t": [], "w": [], "l": [], "valid": []}
    for i in range(T):
        out = policy.predict(x, i, cond)
        noise = torch.stack([draw_step_noise(policy.adapter, cond, x, list(gens)) for _ in range(k)],
                            dim=1).flatten(0, 1)  # (B*k, ...)
        kids = policy.adapter.project(
            policy.step(i, x[rep.to(x.device)], cond_k, model_output=out[rep.to(out.device)], noise=noise).prev_sample,
            cond_k)
        if i + 1 < T:
            x0 = predicted_x0(policy.rule, i + 1, policy.predict(kids, i + 1, cond_k), kids)
        else:
            x0 = kids
        s = score(x0, cond_k).reshape(B, k).float()
        best, worst = s.argmax(1), s.argmin(1)
        kids = kids.reshape((B, k) + kids.shape[1:])
        rows["x_t"].append(x)
        rows["w"].append(kids[torch.arange(B), best])
        rows["l"].append(kids[torch.arange(B), worst])
        rows["valid"].append((s.max(1).values > s.min(1).values).float())
        pick = torch.stack([torch.randint(k, (1,), generator=g) for g in gens]).reshape(B)
        x = kids[torch.arange(B), pick]
    x_t = torch.stack(rows["x_t"], 1)
    return PairSet(x_t, torch.stack(rows["w"], 1), x_t, torch.stack(rows["l"], 1), torch.arange(T),
                   torch.stack(rows["valid"], 1), x)


# ---- configs and losses -----------------------------------------------------------------------------------
@dataclasses.dataclass
class StepPreferenceConfig:
    beta: float = 1.0
    gamma: float = 1.0               # temporal discount: step t weighs gamma^t (1: no discounting)
    clip_range: Optional[float] = None  # eps of the clipped log-ratio (None: unclipped)

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"algorithm.beta must be > 0, got {self.beta}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"algorithm.gamma must lie in (0, 1], got {self.gamma}")
        if self.clip_range is not None and not 0 < self.clip_range < 1:
            raise ValueError(f"algorithm.clip_range must lie in (0, 1) or be null, got {self.clip_range}")


@dataclasses.dataclass
class D3POConfig(StepPreferenceConfig):
    clip_range: Optional[float] = 0.1
    branch_step: int = 0             # steps the two trajectories share after x_T
    preference: str = "reward"       # "reward" (the configured reward of the final samples) | "labels"
    label_file: Optional[str] = None  # JSON Lines of human labels (module doc), for preference "labels"

    def __post_init__(self):
        super().__post_init__()
        if self.preference not in PREFERENCES:
            raise ValueError(f"algorithm.preference must be one of {PREFERENCES}, got {self.preference!r}")
        if self.branch_step < 0:
            raise ValueError(f"algorithm.branch_step must be >= 0, got {self.branch_step}")
        if self.preference == "labels":
            if not self.label_file:
                raise ValueError("algorithm.preference 'labels' needs algorithm.label_file (a JSON Lines file)")
            load_labels(self.label_file)  # errors name the file and line before any model is built
        elif self.label_file is not None:
            raise ValueError(f"algorithm.label_file is set ({self.label_file!r}) but algorithm.preference is "
                             f"{self.preference!r}; set preference: labels")


@dataclasses.dataclass
class SPOConfig(StepPreferenceConfig):
    num_children: int = 4            # children drawn from each state
    scorer: str = "predicted_x0"     # the reward of each child's one-step prediction x0_hat

    def __post_init__(self):
        super().__post_init__()
        if self.num_children < 2:
            raise ValueError(f"algorithm.num_children must be >= 2, got {self.num_children}")
        if self.scorer not in SCORERS:
            raise ValueError(f"algorithm.scorer must be one of {SCORERS}, got {self.scorer!r}")


class StepPreference(Algorithm):
    """The shared loss; subclasses collect their pairs."""

    data_path = DataPath.STEP_PAIRS

    @property
    def needs_reference(self) -> bool:
        return True

    def advantages(self, rewards, prompts):
        return rewards  # unused: preferences, not advantages, drive these losses

    @classmethod
    def check_config(cls, config, cfg) -> None:
        pass

    def loss(self, batch: StepPairBatch, policy, reference):
        c = self.config
        x_t = torch.cat([batch.x_t_w, batch.x_t_l])
        x_prev = torch.cat([batch.x_prev_w, batch.x_prev_l])
        steps = torch.cat([batch.steps, batch.steps])
        cond = cat_conditions([batch.cond, batch.cond])
        logp = policy.transition(x_t, steps, cond, prev_sample=x_prev).log_prob
        ref = reference.transition(x_t, steps, cond, prev_sample=x_prev).log_prob.detach()
        l = clipped_log_ratio(logp, ref, c.clip_range)
        B = batch.steps.shape[0]
        l_w, l_l = l[:B], l[B:]
        weights = batch.valid.to(l) * discount_weights(batch.steps, c.gamma).to(l)
        loss = step_preference_loss(l_w, l_l, c.beta, weights).mean()
        raw = (logp - ref).detach()
        metrics = {"margin": (l_w - l_l).detach().mean(), "log_ratio_abs": raw.abs().mean(),
                   "valid_fraction": batch.valid.float().mean()}
        if c.clip_range is not None:
            lo, hi = math.log1p(-c.clip_range), math.log1p(c.clip_range)
            metrics["clip_fraction"] = ((raw < lo) | (raw > hi)).float().mean()
        return loss, metrics


class D3PO(StepPreference):
    name = "d3po"
    config_class = D3POConfig

    @classmethod
    def check_config(cls, config, cfg):
        if config.branch_step >= cfg.sampling.num_steps:
            raise ValueError(f"algorithm.branch_step = {config.branch_step} must be < sampling.num_steps = "
                             f"{cfg.sampling.num_steps} (the trajectories must differ somewhere)")


class SPO(StepPreference):
    name = "spo"
    config_class = SPOConfig
