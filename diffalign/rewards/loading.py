"""``load_reward(name_or_dir)``: one entry point for every reward, by name or from a directory.

- A registered reward type (a :class:`diffalign.registry.RewardType` in ``diffalign.registry.rewards``:
  "clip_score", "aesthetic", "pickscore", "hps_v2", "hps_v2.1", "image_reward", "weighted_sum",
  "preference_model", a plugin's entry point of group ``diffalign.rewards``, or ``register_reward_type``
  in this process) is built by its loader ``loader(directory, device, dtype, **kwargs)`` with
  ``directory=None`` (model rewards then read ``kwargs['model']``, a hub id or local path, or their
  default hub id).
- A directory holding ``diffalign_reward.json`` = ``{"type": <registered type>, ...}`` is built by
  that type's loader with ``directory`` set and the file's other fields as keyword arguments
  (explicit ``kwargs`` win).
- Any other name is a plain reward callable (a registered one or ``package.module:function``),
  returned with ``kwargs`` bound.

The trainer's ``reward.name`` / ``reward.kwargs`` reach the same rewards through
``registry.resolve_reward``, which returns ``lazy_reward(name)`` for registered types and reward
directories: a callable that loads the model on its first call, on the samples' device.
"""
from __future__ import annotations

import inspect
import json
import os
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple, Union

import torch

from diffalign import registry
from diffalign.registry import RewardType
from diffalign.rewards.base import REWARD_CONFIG_FILE, Reward

RewardLoader = Callable[..., Any]  # loader(directory, device, dtype, **kwargs) -> Reward | callable


class _RewardTypes(Mapping):
    """name -> loader of every registered reward type (a read-only view of ``diffalign.registry.rewards``).

    ``name in REWARD_TYPES`` loads only that entry; iterating loads them all."""

    def __contains__(self, name) -> bool:
        return name in registry.rewards and isinstance(registry.rewards[name], RewardType)

    def __getitem__(self, name: str) -> RewardLoader:
        if name not in self:
            raise KeyError(name)
        return registry.rewards[name].load

    def __iter__(self) -> Iterator[str]:
        return iter([n for n in registry.rewards.names() if n in self])

    def __len__(self) -> int:
        return sum(1 for _ in self)


REWARD_TYPES: Mapping[str, RewardLoader] = _RewardTypes()

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float64": torch.float64}


def register_reward_type(name: str, loader: RewardLoader, overwrite: bool = False) -> RewardLoader:
    """Make ``name`` loadable by ``load_reward`` (and ``reward.name``) in this process. Returns ``loader``.

    Installed packages declare an entry point instead (group ``diffalign.rewards``, docs/design.md "Layers")."""
    try:
        registry.rewards.register(name, RewardType(loader), overwrite=overwrite)
    except registry.RegistryError as exc:
        raise ValueError(f"reward type {name!r}: {exc}") from None
    return loader


def unregister_reward_type(name: str) -> None:
    """Forget a type added by ``register_reward_type`` (built-ins and entry points stay)."""
    registry.rewards.unregister(name)


def parse_dtype(dtype: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).replace("torch.", "") not in _DTYPES:
        raise ValueError(f"reward dtype {dtype!r} is unknown; use one of {sorted(_DTYPES)}")
    return _DTYPES[str(dtype).replace("torch.", "")]


def read_reward_config(directory: str) -> Dict[str, Any]:
    """The contents of ``directory/diffalign_reward.json``; ValueError naming the file if it is unusable."""
    path = os.path.join(directory, REWARD_CONFIG_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"reward directory {directory!r} has no {REWARD_CONFIG_FILE} "
                         f"(a JSON object {{\"type\": <a registered reward type>, ...}})")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "type" not in data:
        raise ValueError(f"{path}: expected a JSON object with a \"type\" key, got {data!r}")
    if data["type"] not in REWARD_TYPES:
        raise ValueError(f"{path}: reward type {data['type']!r} is unknown; registered: {_type_names()}")
    return data


def write_reward_config(directory: str, type: str, **fields) -> str:
    """Write ``directory/diffalign_reward.json`` = {"type": type, **fields}; returns its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, REWARD_CONFIG_FILE)
    with open(path, "w") as f:
        json.dump({"type": type, **fields}, f, indent=2, sort_keys=True)
    return path


def _finish(reward, device, dtype):
    if isinstance(reward, torch.nn.Module):
        if device is not None or dtype is not None:
            reward = reward.to(device=device, dtype=dtype)
        if isinstance(reward, Reward):
            reward.freeze()
    return reward


def _call_loader(rtype: str, directory: Optional[str], device, dtype, kwargs: Dict[str, Any]):
    loader = REWARD_TYPES[rtype]
    try:
        inspect.signature(loader).bind(directory, device, dtype, **kwargs)
    except TypeError as exc:
        raise ValueError(f"reward type {rtype!r}: keyword arguments {sorted(kwargs)} do not fit its loader "
                         f"{getattr(loader, '__name__', loader)}{inspect.signature(loader)}: {exc}") from None
    except ValueError:  # no signature: let the call decide
        pass
    return _finish(loader(directory, device, dtype, **kwargs), device, dtype)


def load_reward(name_or_dir: str, device=None, dtype=None, **kwargs) -> Union[Reward, Callable]:
    """The reward ``name_or_dir`` (see module doc), on ``device`` in ``dtype`` (model rewards only)."""
    dtype = parse_dtype(dtype)
    name = str(name_or_dir)
    if name in REWARD_TYPES:
        return _call_loader(name, None, device, dtype, kwargs)
    if os.path.isdir(name):
        data = read_reward_config(name)
        rtype = data.pop("type")
        return _call_loader(rtype, name, device, dtype, {**data, **kwargs})
    from diffalign.rewards.registry import bind_reward_kwargs, resolve_reward
    if name in registry.rewards or ":" in name:
        return bind_reward_kwargs(resolve_reward(name), name, kwargs)
    if os.path.sep in name and not name.count("/") == 1:
        raise ValueError(f"reward {name!r}: no such directory")
    raise ValueError(f"reward {name!r} is unknown: not a registered reward {registry.rewards.names()}, "
                     f"'package.module:function', nor a directory with {REWARD_CONFIG_FILE}")


def is_model_reward(name: str) -> bool:
    """True where ``name`` is a registered reward type or a reward directory (what ``lazy_reward`` serves)."""
    return name in REWARD_TYPES or (os.path.isdir(name) and os.path.isfile(os.path.join(name, REWARD_CONFIG_FILE)))


_CACHE: Dict[Tuple, Any] = {}


def _loader_signature(name: str) -> inspect.Signature:
    """(samples, prompts, *loader keywords*) so ``bind_reward_kwargs`` checks config kwargs before training."""
    loader = REWARD_TYPES[read_reward_config(name)["type"]] if name not in REWARD_TYPES else REWARD_TYPES[name]
    params = [inspect.Parameter("samples", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              inspect.Parameter("prompts", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    try:
        sig = inspect.signature(loader)
    except (TypeError, ValueError):
        sig = None
    var_kw = inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD) if sig is None else None
    for i, p in enumerate(sig.parameters.values() if sig is not None else ()):
        if p.kind == inspect.Parameter.VAR_KEYWORD:
            var_kw = p
        elif i >= 3 and p.kind != inspect.Parameter.VAR_POSITIONAL:  # directory, device, dtype are the loader's own
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    params.append(inspect.Parameter("dtype", inspect.Parameter.KEYWORD_ONLY, default=None))
    if var_kw is not None:
        params.append(var_kw)
    return inspect.Signature(params)


def lazy_reward(name: str) -> Callable:
    """A reward callable ``(samples, prompts, **kwargs)`` for ``reward.name``: loads ``load_reward(name, **kwargs)``
    once (cached per name and kwargs) on the first call, on the samples' device, and scores with it."""
    if not is_model_reward(name):
        raise ValueError(f"reward.name {name!r} is not a registered reward type nor a reward directory")

    def fn(samples, prompts, dtype=None, **kwargs):
        device = samples.device if isinstance(samples, torch.Tensor) else None
        key = (name, str(device), str(dtype), json.dumps(kwargs, sort_keys=True, default=repr))
        if key not in _CACHE:
            _CACHE[key] = load_reward(name, device=device, dtype=dtype, **kwargs)
        return _CACHE[key](samples, prompts)

    fn.__name__ = name
    fn.__signature__ = _loader_signature(name)
    if name in REWARD_TYPES:  # bind_reward_kwargs runs the type's own check of the kwargs
        fn.check_kwargs = registry.rewards[name].check
    return fn



def _type_names():
    """Registered names for messages, loading nothing (a plugin that fails to load must not hide the message)."""
    return registry.rewards.names()
