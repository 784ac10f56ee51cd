"""The toy modality's registry entries (``diffalign.registry``; entry points ``toy``, ``toy_points`` and
``toy_dual`` of group diffalign.modalities)."""
from __future__ import annotations

from diffalign.modalities.toy.options import ToyDualOptions, ToyOptions, ToyPointsOptions
from diffalign.registry import ModalityEntry


def build(options: ToyOptions, prompts, device):
    from diffalign.modalities.toy.adapter import ToyAdapter
    return ToyAdapter(prompts, dim=options.dim, hidden=options.hidden, scheduler=options.scheduler,
                      init_seed=options.init_seed, device=device, pretrain_steps=options.pretrain_steps)


def rewards():
    from diffalign.modalities.toy.rewards import TOY_REWARDS
    return dict(TOY_REWARDS)


MODALITY = ModalityEntry(options=ToyOptions, build=build, rewards=rewards)


def build_points(options: ToyPointsOptions, prompts, device):
    from diffalign.modalities.toy.points import ToyPointsAdapter
    return ToyPointsAdapter(prompts, max_points=options.max_points, min_points=options.min_points,
                            hidden=options.hidden, scheduler=options.scheduler, init_seed=options.init_seed,
                            device=device, pretrain_steps=options.pretrain_steps)


def point_rewards():
    from diffalign.modalities.toy.rewards import POINT_REWARDS
    return dict(POINT_REWARDS)


def build_dual(options: ToyDualOptions, prompts, device):
    from diffalign.modalities.toy.dual import ToyDualAdapter
    return ToyDualAdapter(prompts, image_guidance_scale=options.image_guidance_scale, dim=options.dim,
                          hidden=options.hidden, scheduler=options.scheduler, init_seed=options.init_seed,
                          device=device, pretrain_steps=options.pretrain_steps)


POINTS = ModalityEntry(options=ToyPointsOptions, build=build_points, rewards=point_rewards)
DUAL = ModalityEntry(options=ToyDualOptions, build=build_dual, rewards=rewards)
