"""Reward functions ``(samples, prompts) -> Tensor[B]`` and prompt sources. Rewards are found by name through
``diffalign.registry.rewards`` (built-ins and entry points of group ``diffalign.rewards``); nothing registers
by being imported."""
from diffalign.rewards.base import MissingRewardWeights, Reward, as_pixels
from diffalign.rewards.color import brightness, color_target
from diffalign.rewards.jpeg import jpeg_compressibility, jpeg_incompressibility, jpeg_size_kb
from diffalign.rewards.prompts import load_prompts
from diffalign.rewards.loading import REWARD_TYPES, load_reward, register_reward_type, unregister_reward_type
from diffalign.rewards.registry import REWARDS, bind_reward_kwargs, call_reward, resolve_reward

__all__ = ["Reward", "MissingRewardWeights", "as_pixels", "REWARD_TYPES", "load_reward", "register_reward_type",
           "unregister_reward_type",
           "REWARDS", "resolve_reward", "bind_reward_kwargs", "call_reward", "load_prompts", "jpeg_size_kb",
           "jpeg_compressibility", "jpeg_incompressibility", "brightness", "color_target"]
