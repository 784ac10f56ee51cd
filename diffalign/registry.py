"""Modalities and rewards by name: built-in tables merged with Python entry points.

Two registries, read by the config check, the trainer and the reward loaders:

- ``modalities`` (entry-point group ``diffalign.modalities``): name -> :class:`ModalityEntry`.
- ``rewards`` (group ``diffalign.rewards``): name -> a reward callable ``(samples, prompts, **kwargs) -> Tensor[B]``
  or a :class:`RewardType` (a model reward, built by its loader on first use; see diffalign/rewards/loading.py).

A plugin package registers both from its own ``pyproject.toml`` (docs/design.md, "Layers")::

    [project.entry-points."diffalign.modalities"]
    audio = "my_pkg.audio:MODALITY"        # ModalityEntry(options=AudioOptions, build=build_audio)
    [project.entry-points."diffalign.rewards"]
    loudness = "my_pkg.rewards:loudness"   # a callable reward
    my_model = "my_pkg.rewards:MY_MODEL"   # RewardType(load_my_model)

Entries load lazily: listing names imports nothing; ``registry[name]`` imports the one module that defines
it. diffalign's own entries come from the built-in tables below (also declared as entry points in
pyproject.toml, which ``tests/test_registry.py`` keeps in step), so they resolve even where the installed
package metadata is stale or absent (a source checkout on PYTHONPATH). An entry point that fails to load
raises :class:`RegistryError` naming the entry point and the distribution that declares it.

This module sits low in the layer order (beside diffalign.seeding, above ops) and imports nothing from
diffalign: the built-in tables are strings.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

__all__ = ["ModalityEntry", "RewardType", "Registry", "RegistryError", "modalities", "rewards",
           "MODALITY_GROUP", "REWARD_GROUP", "BUILTIN_MODALITIES", "BUILTIN_REWARDS"]

MODALITY_GROUP = "diffalign.modalities"
REWARD_GROUP = "diffalign.rewards"
_OWN_DISTRIBUTION = "diffalign"


class RegistryError(ValueError):
    """A name that is not registered, or an entry point that does not load or holds the wrong kind of object."""


@dataclasses.dataclass(frozen=True)
class ModalityEntry:
    """What the config check and the trainer need of a modality, known before building it.

    options: the dataclass of the config's ``modality.options`` (checked key by key before any compute).
    build:   ``build(options, prompts, device) -> ModalityAdapter``.
    rewards: the modality's own rewards by name (what its adapter's ``rewards()`` returns), so the config
             check resolves ``reward.name`` / ``reward.kwargs`` without loading a model.
    readers: the modality's own preference-data layouts by ``data.format`` name (video clips: the data layer
             reads images and vectors only): ``reader(path, verify, max_records) -> PreferenceDataset``.
    """
    options: type
    build: Callable[[Any, List[Any], Any], Any]
    rewards: Callable[[], Mapping[str, Callable]] = dict
    readers: Callable[[], Mapping[str, Callable]] = dict


@dataclasses.dataclass(frozen=True)
class RewardType:
    """A reward built from a model: ``load(directory, device, dtype, **kwargs) -> Reward | callable``.

    ``directory`` is None when the reward is asked for by name (kwargs such as ``model`` then say which
    weights), or a folder whose ``diffalign_reward.json`` names this type.

    ``check(kwargs)``, where given, raises ValueError on kwargs that ``load`` would refuse, without loading
    anything: config validation calls it, so a wrapper's misspelt inner reward fails before training, not at
    the first reward call."""
    load: Callable[..., Any]
    check: Optional[Callable[[Mapping[str, Any]], None]] = None


def _is_reward(obj) -> bool:
    return isinstance(obj, RewardType) or callable(obj)


# name -> "module:attribute"; the same lines are the entry points in pyproject.toml
BUILTIN_MODALITIES: Dict[str, str] = {
    "toy": "diffalign.modalities.toy.entry:MODALITY",
    "toy_points": "diffalign.modalities.toy.entry:POINTS",
    "toy_dual": "diffalign.modalities.toy.entry:DUAL",
    "image": "diffalign.modalities.image.entry:MODALITY",
    "video": "diffalign.modalities.video.entry:MODALITY",
    "editing": "diffalign.modalities.editing.entry:MODALITY",
    "planning": "diffalign.modalities.planning.entry:MODALITY",
}
BUILTIN_REWARDS: Dict[str, str] = {
    # plain callables
    "jpeg_compressibility": "diffalign.rewards.jpeg:jpeg_compressibility",
    "jpeg_incompressibility": "diffalign.rewards.jpeg:jpeg_incompressibility",
    "brightness": "diffalign.rewards.color:brightness",
    "color_target": "diffalign.rewards.color:color_target",
    "compositional": "diffalign.rewards.compositional:compositional_reward",  # the shapes demo's reward
    "frame_difference": "diffalign.rewards.temporal:frame_difference",  # video rewards take (B, F, C, H, W)
    "shapes_video": "diffalign.rewards.video_compositional:shapes_video_reward",  # the video demo's reward
    "edit_preservation": "diffalign.rewards.editing:edit_preservation",  # edit rewards take edit prompt items
    "shapes_edit": "diffalign.rewards.edit_compositional:shapes_edit_reward",  # the editing demo's reward
    # behaviour attributes of trajectories (B, T, S + A); prompt items may request strengths (rewards/behaviour.py)
    "behaviour_speed": "diffalign.rewards.behaviour:behaviour_speed",
    "behaviour_torso_height": "diffalign.rewards.behaviour:behaviour_torso_height",
    "behaviour_jump_height": "diffalign.rewards.behaviour:behaviour_jump_height",
    "behaviour_step_frequency": "diffalign.rewards.behaviour:behaviour_step_frequency",
    "behaviour_energy": "diffalign.rewards.behaviour:behaviour_energy",
    "behaviour_effort": "diffalign.rewards.behaviour:behaviour_effort",
    "behaviour_smoothness": "diffalign.rewards.behaviour:behaviour_smoothness",
    "behaviour_match": "diffalign.rewards.behaviour:behaviour_match",
    # model rewards (RewardType)
    "clip_score": "diffalign.rewards.clip_score:CLIP_SCORE",
    "aesthetic": "diffalign.rewards.aesthetic:AESTHETIC",
    "pickscore": "diffalign.rewards.pickscore:PICKSCORE",
    "hps_v2": "diffalign.rewards.hps:HPS_V2",
    "hps_v2.1": "diffalign.rewards.hps:HPS_V21",
    "image_reward": "diffalign.rewards.image_reward:IMAGE_REWARD",
    "weighted_sum": "diffalign.rewards.combine:WEIGHTED_SUM",
    "preference_model": "diffalign.rewards.training.model:PREFERENCE_MODEL",
    "per_frame": "diffalign.rewards.video:PER_FRAME",
    "temporal_consistency": "diffalign.rewards.temporal:TEMPORAL_CONSISTENCY",
    "xclip_score": "diffalign.rewards.video_text:XCLIP_SCORE",
    "clip_directional_similarity": "diffalign.rewards.editing:CLIP_DIRECTIONAL_SIMILARITY",
    "clip_instruction_similarity": "diffalign.rewards.editing:CLIP_INSTRUCTION_SIMILARITY",
    "clip_image_similarity": "diffalign.rewards.editing:CLIP_IMAGE_SIMILARITY",
    "attribute_strength": "diffalign.rewards.attribute_strength:ATTRIBUTE_STRENGTH",  # AlignDiff's, trained
}


def _load_target(value: str):
    module, _, attr = value.partition(":")
    obj = importlib.import_module(module.strip())
    for part in attr.strip().split("."):
        obj = getattr(obj, part)
    return obj


@dataclasses.dataclass(frozen=True)
class _Source:
    value: str                        # "module:attribute"
    origin: str                       # where the name was declared, for messages
    entry_point: Any = None           # importlib.metadata.EntryPoint, None for built-ins
    obj: Any = None                   # registered in this process (register())
    registered: bool = False


class Registry(Mapping):
    """Name -> object for one entry-point group; a read-only Mapping whose ``[name]`` loads lazily.

    ``register(name, obj)`` adds an entry for this process only (tests, notebooks); installed plugins use
    entry points. A name declared twice with different targets (two distributions, or a plugin reusing a
    built-in name) is an error when that name is used."""

    def __init__(self, group: str, kind: str, builtins: Dict[str, str], check: Callable[[Any], bool],
                 expected: str):
        self.group, self.kind, self.expected = group, kind, expected
        self._builtins = builtins
        self._check = check
        self._registered: Dict[str, Any] = {}
        self._loaded: Dict[Tuple[str, str], Any] = {}

    # ---- sources ---------------------------------------------------------------------------------
    def _entry_points(self) -> List[Any]:
        # looked up on every call (a few ms): a plugin installed into the running environment, or a test's
        # patched importlib.metadata.entry_points, is seen without a cache to clear
        eps = importlib.metadata.entry_points(group=self.group)
        return [ep for ep in eps if (_dist_name(ep) or "").lower() != _OWN_DISTRIBUTION]  # ours: the built-in table

    def _sources(self) -> Dict[str, List[_Source]]:
        out: Dict[str, List[_Source]] = {}
        for name, value in self._builtins.items():
            out.setdefault(name, []).append(_Source(value, "diffalign (built-in)"))
        for ep in self._entry_points():
            dist = _dist_name(ep) or "an unknown distribution"
            out.setdefault(ep.name, []).append(
                _Source(ep.value, f"entry point {ep.name} = {ep.value!r} (group {self.group!r}) of package {dist!r}",
                        entry_point=ep))
        for name, obj in self._registered.items():
            out[name] = [_Source(f"<registered {obj!r}>", "register()", obj=obj, registered=True)]
        return out

    # ---- Mapping --------------------------------------------------------------------------------
    def names(self) -> List[str]:
        """Every registered name, sorted; loads nothing."""
        return sorted(self._sources())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._sources())

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name in self._sources()

    def __getitem__(self, name: str):
        sources = self._sources().get(name)
        if not sources:
            raise KeyError(name)
        if len({s.value for s in sources}) > 1:
            raise RegistryError(f"{self.kind} {name!r} is declared more than once: "
                                + "; ".join(s.origin for s in sources))
        src = sources[0]
        if src.registered:
            return src.obj
        key = (name, src.value)
        if key not in self._loaded:
            try:
                obj = src.entry_point.load() if src.entry_point is not None else _load_target(src.value)
            except Exception as exc:  # any failure of a plugin's import, named with where it came from
                raise RegistryError(f"{self.kind} {name!r}: {src.origin} failed to load: "
                                    f"{type(exc).__name__}: {exc}") from exc
            if not self._check(obj):
                raise RegistryError(f"{self.kind} {name!r}: {src.origin} gives {obj!r}, not {self.expected}")
            self._loaded[key] = obj
        return self._loaded[key]

    def get(self, name: str, default=None):
        """The entry ``name`` (loaded now), or ``default`` when no such name is registered."""
        return self[name] if name in self else default

    def require(self, name: str, what: Optional[str] = None):
        """The entry ``name``; RegistryError naming ``what`` (a config key) and the known names if there is none."""
        if name not in self:
            raise RegistryError(f"{what or self.kind} must be one of {self.names()}, got {name!r}")
        return self[name]

    def origin(self, name: str) -> str:
        """Where ``name`` was declared (built-in, which package's entry point, or register())."""
        return "; ".join(s.origin for s in self._sources().get(name, ())) or "not registered"

    # ---- in-process registration ------------------------------------------------------------------
    def register(self, name: str, obj: Any, overwrite: bool = False):
        """Add ``name`` for this process. Returns ``obj``. ValueError if the name exists (unless ``overwrite``)."""
        if not self._check(obj):
            raise RegistryError(f"{self.kind} {name!r}: {obj!r} is not {self.expected}")
        if not overwrite and name in self and self._registered.get(name) != obj:
            raise RegistryError(f"{self.kind} {name!r} is already registered ({self.origin(name)})")
        self._registered[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        """Forget a ``register()``-ed name (built-ins and entry points stay)."""
        self._registered.pop(name, None)


def _dist_name(ep) -> Optional[str]:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) or (dist.metadata["Name"] if dist is not None else None)


modalities = Registry(MODALITY_GROUP, "modality", BUILTIN_MODALITIES, lambda o: isinstance(o, ModalityEntry),
                      "a diffalign.registry.ModalityEntry")
rewards = Registry(REWARD_GROUP, "reward", BUILTIN_REWARDS, _is_reward,
                   "a reward callable or a diffalign.registry.RewardType")
