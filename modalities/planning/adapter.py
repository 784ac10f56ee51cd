"""The planning modality: diffusion over state-action trajectories in a gymnasium MuJoCo environment.

x: (B, horizon, S + A), normalised per dimension (:class:`Normalizer`, stored with the model). Conditions:

- ``observation`` (B, S): the observed current state, raw. It conditions by inpainting (Diffuser): ``project``
  writes its normalised value into x[:, 0, :S] after every step, ``project_noise`` zeroes noise there and
  ``initial_noise`` starts from it, and ``logprob_mask`` gives those entries weight 0, so a pinned entry counts
  in no log-prob, KL or denoising loss.
- ``attributes`` / ``attribute_mask`` (B, K): requested behaviour strengths and which are requested (AlignDiff);
  the unconditional branch of classifier-free guidance masks them all.

A prompt item is a text or a mapping ``{"text", "observation": [S floats] | "start_seed": int,
"attributes": {name: strength}}``. Without an observation or a seed, the item's generator draws the env reset
seed, so a seeded run draws the same start states.

``decode`` returns exactly the raw trajectory tensor (B, horizon, S + A): row t is (observation_t, action_t),
row 0 holding the observed state bit for bit. Its time step is the environment's ``dt``
(:data:`~diffalign.modalities.planning.env.ENV_SPECS`). Executing plans in the environment is execute.py's job.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import torch

from diffalign.modalities.base import Conditions, Generators, ModalityAdapter, item_generators, unwrap
from diffalign.modalities.planning.denoisers import build_denoiser
from diffalign.modalities.planning.env import env_spec, make_env
from diffalign.modalities.planning.normalizer import Normalizer
from diffalign.modalities.toy.adapter import FullFineTuning

__all__ = ["PlanningAdapter", "make_planning_scheduler", "CONFIG_NAME", "WEIGHTS_NAME", "tiny_denoiser_config"]

CONFIG_NAME = "planner.json"
WEIGHTS_NAME = "denoiser.safetensors"
PREDICTION_TYPES = ("epsilon", "sample")


def make_planning_scheduler(num_train_timesteps: int, prediction_type: str = "epsilon"):
    """DDPM with the cosine schedule (Diffuser's; diffusers' "squaredcos_cap_v2"), posterior variance."""
    from diffusers import DDPMScheduler
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"planning prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return DDPMScheduler(num_train_timesteps=int(num_train_timesteps), beta_schedule="squaredcos_cap_v2",
                         clip_sample=False, prediction_type=prediction_type, variance_type="fixed_small")


def tiny_denoiser_config(architecture: str, transition_dim: int, num_attributes: int, horizon: int) -> Dict[str, Any]:
    """The tiny preset of each architecture (seconds per training step on one CPU core)."""
    base = {"architecture": architecture, "transition_dim": transition_dim, "num_attributes": num_attributes,
            "horizon": horizon}
    if architecture == "unet1d":
        return dict(base, block_out_channels=[16, 32], norm_num_groups=8)
    return dict(base, hidden=32, depth=2, heads=4)


class PlanningAdapter(FullFineTuning, ModalityAdapter):
    """A trajectory planner over ``env``. Build it with :meth:`tiny` or :meth:`from_pretrained`."""

    def __init__(self, denoiser: torch.nn.Module, denoiser_config: Dict[str, Any], env: str, horizon: int,
                 normalizer: Normalizer, attributes: Sequence[str] = (), num_train_timesteps: int = 100,
                 prediction_type: str = "epsilon", device: str | torch.device = "cpu"):
        spec = env_spec(env)
        self.env_name, self.spec = env, spec
        self.state_dim, self.action_dim = spec.state_dim, spec.action_dim
        self.transition_dim = spec.state_dim + spec.action_dim
        self.horizon = int(horizon)
        if self.horizon < 2:
            raise ValueError(f"planning horizon must be >= 2, got {horizon}")
        if normalizer.dim != self.transition_dim:
            raise ValueError(f"the normaliser has {normalizer.dim} dims, {env} trajectories have S + A = "
                             f"{self.transition_dim}")
        self.attributes: List[str] = [str(a) for a in attributes]
        if len(set(self.attributes)) != len(self.attributes):
            raise ValueError(f"planning attribute names repeat: {self.attributes}")
        self.normalizer = normalizer
        self.denoiser_config = dict(denoiser_config)
        self.num_train_timesteps, self.prediction_type = int(num_train_timesteps), prediction_type
        self.scheduler = make_planning_scheduler(num_train_timesteps, prediction_type)
        self.default_step_rule = "ddpm"
        self.device = torch.device(device)
        self.dtype = torch.float32
        self.denoiser = denoiser.to(self.device)
        self._reference_denoiser = copy.deepcopy(self.denoiser).requires_grad_(False).eval()
        self._in_reference = False
        self._env = None  # built on first use (drawing start states)
        #: Diffuser's value guidance, (value function, scale) or None (value.py); applied in ``denoise``
        self.value_guidance = None

    # ---- construction ----------------------------------------------------------------------------------
    @classmethod
    def tiny(cls, env: str = "Hopper-v5", horizon: int = 16, architecture: str = "unet1d",
             attributes: Sequence[str] = (), normalizer: Optional[Normalizer] = None, init_seed: int = 0,
             **kwargs) -> "PlanningAdapter":
        """A random tiny planner; ``normalizer`` defaults to the identity (give a dataset's to plan in its scale)."""
        spec = env_spec(env)
        d = spec.state_dim + spec.action_dim
        config = tiny_denoiser_config(architecture, d, len(attributes), horizon)
        with torch.random.fork_rng(devices=[]):  # deterministic init without touching the caller's RNG
            torch.manual_seed(init_seed)
            denoiser = build_denoiser(config)
        return cls(denoiser, config, env, horizon, normalizer or Normalizer.identity(d), attributes, **kwargs)

    @classmethod
    def from_pretrained(cls, directory: str, device: str | torch.device = "cpu") -> "PlanningAdapter":
        """A planner saved by :meth:`save_pretrained`: planner.json (env, horizon, attributes, normaliser,
        denoiser and scheduler config) and denoiser.safetensors."""
        from safetensors.torch import load_file
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{directory} is not a planner folder: {CONFIG_NAME} is missing")
        with open(path) as f:
            meta = json.load(f)
        missing = [k for k in ("env", "horizon", "normalizer", "denoiser") if k not in meta]
        if missing:
            raise ValueError(f"{path}: missing fields {missing}")
        denoiser = build_denoiser(meta["denoiser"])
        denoiser.load_state_dict(load_file(os.path.join(directory, WEIGHTS_NAME)))
        norm = Normalizer(meta["normalizer"]["mean"], meta["normalizer"]["std"])
        sched = meta.get("scheduler", {})
        return cls(denoiser, meta["denoiser"], meta["env"], meta["horizon"], norm, meta.get("attributes", ()),
                   num_train_timesteps=sched.get("num_train_timesteps", 100),
                   prediction_type=sched.get("prediction_type", "epsilon"), device=device)

    def save_pretrained(self, directory: str) -> None:
        from safetensors.torch import save_file
        os.makedirs(directory, exist_ok=True)
        meta = {"env": self.env_name, "horizon": self.horizon, "attributes": self.attributes,
                "normalizer": self.normalizer.to_json(), "denoiser": self.denoiser_config,
                "scheduler": {"num_train_timesteps": self.num_train_timesteps, "prediction_type": self.prediction_type}}
        with open(os.path.join(directory, CONFIG_NAME), "w") as f:
            json.dump(meta, f, indent=1)
        save_file({k: v.detach().cpu().contiguous() for k, v in unwrap(self.denoiser).state_dict().items()},
                  os.path.join(directory, WEIGHTS_NAME))

    def freeze_reference(self) -> None:
        """Make the frozen reference a copy of the denoiser as it is now (after pretraining it)."""
        self._reference_denoiser = copy.deepcopy(unwrap(self.denoiser)).requires_grad_(False).eval()

    # ---- conditions ------------------------------------------------------------------------------------
    def start_observation(self, seed: int) -> torch.Tensor:
        """The environment's observation after ``reset(seed=seed)`` (S,)."""
        if self._env is None:
            self._env = make_env(self.env_name)
        obs, _ = self._env.reset(seed=int(seed))
        return torch.as_tensor(obs, dtype=torch.float32)

    def _item_observation(self, item: Any, generator: Optional[torch.Generator]) -> torch.Tensor:
        if isinstance(item, dict) and item.get("observation") is not None:
            obs = torch.as_tensor(item["observation"], dtype=torch.float32).reshape(-1)
            if obs.numel() != self.state_dim:
                raise ValueError(f"planning item {item!r}: 'observation' needs {self.state_dim} values for "
                                 f"{self.env_name}, got {obs.numel()}")
            return obs
        if isinstance(item, dict) and item.get("start_seed") is not None:
            return self.start_observation(int(item["start_seed"]))
        return self.start_observation(int(torch.randint(2 ** 31 - 1, (1,), generator=generator)))

    def _item_attributes(self, item: Any):
        values, mask = torch.zeros(len(self.attributes)), torch.zeros(len(self.attributes))
        request = item.get("attributes") if isinstance(item, dict) else None
        if request is None:
            return values, mask
        if not isinstance(request, dict):
            raise ValueError(f"planning item {item!r}: 'attributes' must map attribute names to strengths")
        for name, value in request.items():
            if name not in self.attributes:
                raise ValueError(f"planning item {item!r}: attribute {name!r} is not one of the model's "
                                 f"{self.attributes}")
            k = self.attributes.index(name)
            values[k], mask[k] = float(value), 1.0
        return values, mask

    def encode_conditions(self, items: Sequence[Any], generator: Generators = None) -> Conditions:
        obs = [self._item_observation(it, g) for it, g in zip(items, item_generators(generator, len(items)))]
        attrs = [self._item_attributes(it) for it in items]
        return {"observation": torch.stack(obs).to(self.device),
                "attributes": torch.stack([a for a, _ in attrs]).to(self.device),
                "attribute_mask": torch.stack([m for _, m in attrs]).to(self.device)}

    def unconditional(self, cond: Conditions) -> Conditions:
        return {"observation": cond["observation"], "attributes": torch.zeros_like(cond["attributes"]),
                "attribute_mask": torch.zeros_like(cond["attribute_mask"])}

    # ---- noise and inpainting --------------------------------------------------------------------------
    def pinned(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) bool: the entries inpainting fixes (the first step's state)."""
        m = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
        m[:, 0, :self.state_dim] = True
        return m

    def initial_noise(self, cond: Conditions, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        b = cond["observation"].shape[0]
        gen_device = generator.device if generator is not None else self.device
        noise = torch.randn((b, self.horizon, self.transition_dim), generator=generator, device=gen_device)
        return self.project(self.project_noise(noise.to(self.device), cond), cond)

    def project_noise(self, noise: torch.Tensor, cond: Conditions) -> torch.Tensor:
        return noise.masked_fill(self.pinned(noise), 0.0)

    def project(self, x: torch.Tensor, cond: Conditions) -> torch.Tensor:
        observed = self.normalizer.normalize(cond["observation"].to(x.dtype), slice(0, self.state_dim))
        if torch.equal(x[:, 0, :self.state_dim], observed):
            return x  # already holds: the chain skips re-scoring
        out = x.clone()
        out[:, 0, :self.state_dim] = observed
        return out

    def logprob_mask(self, cond: Conditions, x: torch.Tensor) -> torch.Tensor:
        return (~self.pinned(x)).to(x.dtype)

    # ---- the denoiser ----------------------------------------------------------------------------------
    def denoise(self, x, timesteps, cond):
        out = self._current_denoiser()(x, timesteps, cond["attributes"], cond["attribute_mask"])
        if self.value_guidance is not None:
            from diffalign.modalities.planning.value import guided_prediction
            value, scale = self.value_guidance
            out = guided_prediction(out, x, timesteps, value, scale, self.scheduler.alphas_cumprod,
                                    self.prediction_type, self.logprob_mask(cond, x))
        return out

    # ---- what rewards see ------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, x0: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """Raw trajectories (B, horizon, S + A), row 0's state exactly the observed one."""
        traj = self.normalizer.unnormalize(x0.float())
        first = torch.cat([cond["observation"].to(traj), traj[:, 0, self.state_dim:]], dim=-1)
        return torch.cat([first[:, None], traj[:, 1:]], dim=1)

    def encode(self, samples, items):
        """Stored raw trajectories ((horizon, S + A) arrays) -> (normalised x0, conditions whose observation is
        each trajectory's first state; attributes from the items)."""
        rows = [torch.as_tensor(s, dtype=torch.float32) for s in samples]
        bad = [tuple(r.shape) for r in rows if tuple(r.shape) != (self.horizon, self.transition_dim)]
        if bad:
            raise ValueError(f"planning samples must be ({self.horizon}, {self.transition_dim}) trajectories of "
                             f"{self.env_name}; got shapes {bad[:3]}")
        traj = torch.stack(rows)
        sized = [dict(it, observation=r[0, :self.state_dim].tolist()) if isinstance(it, dict) else
                 {"text": it, "observation": r[0, :self.state_dim].tolist()} for it, r in zip(items, rows)]
        cond = self.encode_conditions(sized)
        return self.project(self.normalizer.normalize(traj).to(self.device), cond), cond

    def sample_grid(self, decoded: torch.Tensor) -> torch.Tensor:
        """Filmstrips of up to 4 decoded plans (every 4th state), stacked, as a (3, H, W) image in [0, 1]."""
        import numpy as np

        from diffalign.modalities.planning.render import filmstrip, render_states
        rows = [filmstrip(render_states(plan[::4, :self.state_dim], self.env_name, size=64)) for plan in decoded[:4]]
        return torch.from_numpy(np.concatenate(rows, axis=0)).permute(2, 0, 1).float() / 255.0

    def rewards(self):
        from diffalign.modalities.planning.rewards import PLANNING_REWARDS
        return dict(PLANNING_REWARDS)
