"""Training configuration: typed dataclasses loaded from YAML plus ``dotted.key=value`` overrides.

Every check that can fail runs here, before any model is built: unknown keys, wrong types, missing
files, impossible batch splits. Each error is one ValueError naming the dotted key and the value.
Sections whose keys depend on a choice (``algorithm`` on its name, ``modality.options`` on the
modality) are validated against the chosen class's own dataclass.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import typing
from typing import Any, Dict, List, Optional, Tuple

import yaml

__all__ = ["TrainConfig", "load_config", "parse_overrides", "apply_overrides", "from_dict", "ConfigError",
           "modality_options", "shipped_config", "resolve_config_path", "config_prompts", "item_path_keys"]

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and the value."""


@dataclasses.dataclass
class ModalityConfig:
    name: str = "toy"                                       # "toy", "image" or a plugin's (diffalign.registry)
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)  # the modality's own options


@dataclasses.dataclass
class PromptsConfig:
    list: Optional[List[Any]] = None  # prompt items: texts, or mappings (diffalign.rewards.prompts)
    file: Optional[str] = None        # one text per line, or .jsonl: one JSON text or object per line


@dataclasses.dataclass
class SamplingConfig:
    step_rule: Optional[str] = None     # "ddim" | "ddpm" | "flow_sde"; default: the modality's
    num_steps: int = 10
    eta: float = 1.0                    # DDIM
    noise_level: float = 0.7            # flow SDE
    guidance_scale: float = 1.0
    logprob_reduction: str = "mean"
    batch_size: int = 8                 # samples per process per rollout batch
    num_batches_per_epoch: int = 1


@dataclasses.dataclass
class RewardServerConfig:
    """``reward.server``: score in a separate, warm reward process (diffalign/rewards/server.py)."""
    enabled: bool = False
    timeout_s: float = 60.0             # the most one batch may take, per attempt
    retries: int = 2                    # restarts of the reward process per batch after a crash or timeout
    batch_size: int = 0                 # samples per request; 0: each rollout batch is one request
    startup_timeout_s: float = 600.0    # the most loading the reward may take
    device: Optional[str] = None        # where the reward runs; default: the trainer's device

    def __post_init__(self):
        if self.timeout_s <= 0 or self.startup_timeout_s <= 0:
            raise ValueError(f"config keys 'reward.server.timeout_s' / 'reward.server.startup_timeout_s' must be > 0, "
                             f"got {self.timeout_s!r} / {self.startup_timeout_s!r}")
        if self.retries < 0 or self.batch_size < 0:
            raise ValueError(f"config keys 'reward.server.retries' / 'reward.server.batch_size' must be >= 0, "
                             f"got {self.retries!r} / {self.batch_size!r}")


@dataclasses.dataclass
class RewardConfig:
    name: str = "toy_target_distance"
    kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    server: RewardServerConfig = dataclasses.field(default_factory=RewardServerConfig)


@dataclasses.dataclass
class OptimConfig:
    batch_size: int = 8                 # transitions per process per forward (a minibatch of samples)
    gradient_accumulation_steps: int = 1  # minibatches per optimiser step
    inner_epochs: int = 1               # passes over each rollout batch
    timestep_fraction: float = 1.0      # share of the T steps trained per sample
    learning_rate: float = 3e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-4
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    warmup_steps: int = 0               # linear learning-rate warm-up (optimiser steps)
    mixed_precision: str = "auto"       # "auto" (fits the machine, see trainer/precision.py) | "no" | "fp16" | "bf16"
    max_minutes: Optional[float] = None  # wall-clock budget of train(): checked between rollout batches and
                                        # optimiser steps; the epoch ends its current unit of work, then the run
                                        # saves a checkpoint and its final weights as at its last epoch
    ema_decay: float = 0.0              # > 0: also keep an exponential moving average of the trainable weights
                                        # (diffusers' EMAModel, its (1 + n) / (10 + n) warm-up capped at this);
                                        # rollouts use the live weights, the saved `final` weights the average


@dataclasses.dataclass
class DataConfig:
    """Stored preference data for the offline algorithms (DPO family, KTO); see diffalign/data."""
    path: Optional[str] = None          # a file, a folder, a hub id (owner/name) or "synthetic:toy"
    format: Optional[str] = None        # jsonl | binary | pickapic | hpdv2 | imagerewarddb; default: detected
    split: str = "train"                # hub datasets only
    verify_images: bool = True          # decode every image at load so broken ones are counted up front
    max_records: Optional[int] = None   # read at most this many records (json/jsonl/hub)
    streaming: bool = False             # hub ids: stream the first max_records rows instead of downloading all
    num_pairs: int = 256                # synthetic sets only
    cache_latents: bool = True          # encode each stored sample once and keep x0 in memory
    eval_samples: int = 0               # > 0: each epoch, log eval_reward (reward.name's mean over this many
                                        # samples, fixed seeds) and eval_implicit_acc / eval_reward_margin (on
                                        # the first this-many stored items, fixed noise and timesteps)


@dataclasses.dataclass
class LoggingConfig:
    tensorboard: bool = True
    progress_bar: bool = True
    image_every: int = 1                # epochs between tensorboard sample grids


@dataclasses.dataclass
class CheckpointConfig:
    every: int = 1                      # epochs between checkpoints
    keep_last: int = 2


@dataclasses.dataclass
class TrainConfig:
    output_dir: str = ""
    seed: int = 0
    epochs: int = 10
    resume_from: Optional[str] = None   # "latest" or a checkpoint directory
    modality: ModalityConfig = dataclasses.field(default_factory=ModalityConfig)
    prompts: PromptsConfig = dataclasses.field(default_factory=PromptsConfig)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)
    algorithm: Dict[str, Any] = dataclasses.field(default_factory=lambda: {"name": "ddpo"})
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# ---- shipped configs ------------------------------------------------------------------------------
def shipped_config(name: str) -> Optional[str]:
    """Path of a config shipped in diffalign/configs (``ddpo_tiny`` or ``ddpo_tiny.yaml``), else None."""
    for candidate in (name, name + ".yaml"):
        path = os.path.join(CONFIG_DIR, candidate)
        if os.path.isfile(path):
            return path
    return None


def resolve_config_path(name: str) -> str:
    """A path as given if it exists, else the shipped config of that name, else the name unchanged."""
    return name if os.path.isfile(name) else (shipped_config(name) or name)


# ---- typed loading ---------------------------------------------------------------------------------
_NO_WORDS = {"train.mixed_precision"}  # string keys whose value "no" YAML turns into false


def _check_type(key: str, value: Any, tp) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for arg in args:  # the first member type the value fits (Union[bool, List[str]]: true, or a list of words)
            try:
                return _check_type(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"config key {key!r}: {value!r} fits none of its types "
                          f"({'; '.join(e.split(': ', 1)[-1] for e in errors)})")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if value is False and key in _NO_WORDS:  # YAML 1.1 reads a bare `no` as false
            return "no"
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
        return value
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {value!r}")
        return dict(value)
    raise TypeError(f"unsupported config type {tp} at {key}")  # a bug in a config dataclass


def from_dict(cls, data: Any, prefix: str = ""):
    """Build dataclass ``cls`` from a mapping, checking keys and types (errors name ``prefix.key``)."""
    where = prefix or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key {where!r}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown config key {key!r} (value {data[unknown[0]]!r}); {where} accepts {sorted(fields)}")
    kwargs = {k: _check_type(f"{prefix}.{k}" if prefix else k, v, hints[k]) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:  # a dataclass's own __post_init__ check, already naming its key
        raise ConfigError(str(exc)) from None


# ---- overrides -------------------------------------------------------------------------------------
def parse_overrides(items: List[str]) -> Dict[str, Any]:
    """["a.b=1", "c=[x, y]"] -> {"a.b": 1, "c": ["x", "y"]}; values are parsed as YAML."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return out


def apply_overrides(data: Dict[str, Any], overrides: Dict[str, Any]) -> Dict[str, Any]:
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {dotted!r}: {'.'.join(parts[:i + 1])!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


# ---- semantic checks ---------------------------------------------------------------------------------
def _positive(key: str, value, allow_zero=False):
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"config key {key!r} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def validate(cfg: TrainConfig, num_processes: int = 1) -> None:
    """Checks that need more than one key, or the file system. Raises ConfigError."""
    from diffalign.algorithms import ALGORITHMS
    from diffalign.mdp import STEP_RULES
    from diffalign.mdp.trajectory import LOGPROB_REDUCTIONS

    if not cfg.output_dir:
        raise ConfigError("config key 'output_dir' is required (a directory for metrics and checkpoints)")
    _positive("epochs", cfg.epochs)
    for key in ("num_steps", "batch_size", "num_batches_per_epoch"):
        _positive(f"sampling.{key}", getattr(cfg.sampling, key))
    for key in ("batch_size", "gradient_accumulation_steps", "inner_epochs", "learning_rate"):
        _positive(f"train.{key}", getattr(cfg.train, key))
    _positive("train.max_grad_norm", cfg.train.max_grad_norm)
    _positive("train.warmup_steps", cfg.train.warmup_steps, allow_zero=True)
    _positive("checkpoint.every", cfg.checkpoint.every)
    _positive("checkpoint.keep_last", cfg.checkpoint.keep_last)
    _positive("logging.image_every", cfg.logging.image_every)
    _positive("sampling.eta", cfg.sampling.eta, allow_zero=True)
    _positive("sampling.noise_level", cfg.sampling.noise_level, allow_zero=True)
    _positive("sampling.guidance_scale", cfg.sampling.guidance_scale, allow_zero=True)
    if not 0 < cfg.train.timestep_fraction <= 1:
        raise ConfigError(f"config key 'train.timestep_fraction' must lie in (0, 1], got {cfg.train.timestep_fraction!r}")
    if cfg.train.max_minutes is not None:
        _positive("train.max_minutes", cfg.train.max_minutes)
    if not 0 <= cfg.train.ema_decay < 1:
        raise ConfigError(f"config key 'train.ema_decay' must lie in [0, 1) (0: no average), got {cfg.train.ema_decay!r}")
    if cfg.train.mixed_precision not in ("auto", "no", "fp16", "bf16"):
        raise ConfigError(f"config key 'train.mixed_precision' must be 'auto', 'no', 'fp16' or 'bf16', "
                          f"got {cfg.train.mixed_precision!r}")
    if cfg.sampling.logprob_reduction not in LOGPROB_REDUCTIONS:
        raise ConfigError(f"config key 'sampling.logprob_reduction' must be one of {LOGPROB_REDUCTIONS}, "
                          f"got {cfg.sampling.logprob_reduction!r}")
    if cfg.sampling.step_rule is not None and cfg.sampling.step_rule not in STEP_RULES:
        raise ConfigError(f"config key 'sampling.step_rule' must be one of {sorted(STEP_RULES)}, "
                          f"got {cfg.sampling.step_rule!r}")
    modality = _modality_entry(cfg.modality.name)
    algo_name = cfg.algorithm.get("name")
    offline = algo_name in ALGORITHMS and ALGORITHMS[algo_name].data_path in ("offline_pairs", "offline_labels")
    if offline:  # stored preference data; prompts come from it unless given
        validate_data(cfg)
    no_prompts = cfg.prompts.list is None and cfg.prompts.file is None
    if (cfg.prompts.list is None) == (cfg.prompts.file is None) and not (offline and no_prompts):
        raise ConfigError("config keys 'prompts.list' / 'prompts.file': give exactly one "
                          f"(got list={cfg.prompts.list!r}, file={cfg.prompts.file!r})")
    if cfg.prompts.file is not None and not os.path.isfile(cfg.prompts.file):
        raise ConfigError(f"config key 'prompts.file': file {cfg.prompts.file!r} does not exist")
    if cfg.prompts.list is not None and not cfg.prompts.list:
        raise ConfigError("config key 'prompts.list' is empty")
    if cfg.prompts.list is not None or cfg.prompts.file is not None:
        try:  # every item a text or a JSON-able mapping, every JSONL line readable, package paths resolvable
            config_prompts(cfg)
        except ValueError as exc:
            raise ConfigError(f"config key 'prompts': {exc}") from None
    if cfg.resume_from not in (None, "latest") and not os.path.isdir(cfg.resume_from):
        raise ConfigError(f"config key 'resume_from': checkpoint {cfg.resume_from!r} does not exist "
                          "(use 'latest' or a checkpoint directory)")
    # the algorithm section, against the chosen algorithm's dataclass
    algo = dict(cfg.algorithm)
    name = algo.pop("name", None)
    if name not in ALGORITHMS:
        raise ConfigError(f"config key 'algorithm.name' must be one of {sorted(ALGORITHMS)}, got {name!r}")
    algo_cfg = from_dict(ALGORITHMS[name].config_class, algo, "algorithm")
    from diffalign.algorithms import DataPath
    generator_path = ALGORITHMS[name].data_path == DataPath.GENERATOR
    # batch splits
    s, t = cfg.sampling, cfg.train
    local = s.batch_size * s.num_batches_per_epoch
    if offline:
        pass  # offline minibatches are train.batch_size pairs (or labels) drawn from the stored data
    elif generator_path:
        pass  # renders are drawn per loss evaluation (train.batch_size each); nothing is rolled out to split
    elif local % t.batch_size:
        raise ConfigError(f"config key 'train.batch_size' = {t.batch_size} does not divide the {local} samples a "
                          f"process rolls out per epoch (sampling.batch_size x sampling.num_batches_per_epoch)")
    elif (local // t.batch_size) % t.gradient_accumulation_steps:
        raise ConfigError(f"config key 'train.gradient_accumulation_steps' = {t.gradient_accumulation_steps} does "
                          f"not divide the {local // t.batch_size} minibatches per inner epoch")
    group = getattr(algo_cfg, "group_size", None)
    if group is not None and (s.batch_size * num_processes) % group:
        raise ConfigError(f"config key 'algorithm.group_size' = {group} does not divide the rollout batch of "
                          f"{s.batch_size * num_processes} samples (sampling.batch_size x {num_processes} processes)")
    together = getattr(algo_cfg, "common_noise", False) and group
    if together and (s.batch_size % group or t.batch_size % group):
        raise ConfigError(f"config key 'algorithm.common_noise' keeps prompt groups of algorithm.group_size = {group} "
                          f"together: it must divide sampling.batch_size ({s.batch_size}) and train.batch_size "
                          f"({t.batch_size})")
    # the modality's own options
    modality_options(cfg)
    # the reward, where the run calls one (online rollouts; offline evaluation samples; a generator algorithm
    # with algorithm.reward_weight > 0): name and kwargs
    from diffalign.rewards import bind_reward_kwargs, resolve_reward
    sampled = (DataPath.DIFFERENTIABLE_SAMPLING, DataPath.STEP_PAIRS)  # trainer/common.py adds differentiable rewards
    scores_renders = generator_path and getattr(algo_cfg, "reward_weight", 0) > 0
    if ALGORITHMS[name].data_path in (DataPath.ONLINE_ROLLOUT,) + sampled or cfg.data.eval_samples > 0 \
            or scores_renders:
        rewards = dict(modality.rewards())
        if ALGORITHMS[name].data_path in sampled or scores_renders:
            from diffalign.rewards.differentiable import DIFFERENTIABLE_REWARDS
            rewards = {**DIFFERENTIABLE_REWARDS, **rewards}  # what trainer/common.py's reward_table gives
        try:
            bind_reward_kwargs(resolve_reward(cfg.reward.name, rewards), cfg.reward.name, cfg.reward.kwargs)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    check = getattr(ALGORITHMS[name], "check_config", None)  # checks between the algorithm and other sections
    if check is not None:
        try:
            check(algo_cfg, cfg)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def _modality_entry(name: str):
    """The registry entry of ``modality.name``; ConfigError naming the key (and a plugin that fails to load)."""
    from diffalign.registry import RegistryError, modalities
    try:
        return modalities.require(name, "config key 'modality.name'")
    except RegistryError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith("config key") else f"config key 'modality.name' = {name!r}: {msg}") \
            from None


def modality_options(cfg: TrainConfig):
    """``cfg.modality.options`` as the modality's own options dataclass (errors name ``modality.options.<key>``)."""
    return from_dict(_modality_entry(cfg.modality.name).options, cfg.modality.options, "modality.options")


def validate_data(cfg: TrainConfig) -> None:
    """Config checks of the ``data`` section (called by validate for offline algorithms)."""
    from diffalign.data import FORMATS
    from diffalign.data.readers import looks_like_hub_id
    from diffalign.modalities.toy.synthetic import SYNTHETIC
    d = cfg.data
    if not d.path:
        raise ConfigError(f"config key 'data.path' is required by algorithm {cfg.algorithm.get('name')!r} "
                          "(a file, a folder, a hub id or 'synthetic:toy')")
    if d.path.startswith("synthetic:"):
        kind = d.path.partition(":")[2]
        if kind not in SYNTHETIC:
            raise ConfigError(f"config key 'data.path': unknown synthetic set {d.path!r}; choose one of "
                              f"{['synthetic:' + k for k in SYNTHETIC]}")
        if cfg.prompts.list is None and cfg.prompts.file is None:
            raise ConfigError(f"config key 'data.path' = {d.path!r} needs prompts.list or prompts.file")
        if d.num_pairs < 1:
            raise ConfigError(f"config key 'data.num_pairs' must be > 0, got {d.num_pairs!r}")
    elif not os.path.exists(d.path) and not looks_like_hub_id(d.path):
        raise ConfigError(f"config key 'data.path': {d.path!r} is neither an existing file or folder nor a hub id")
    formats = tuple(FORMATS) + tuple(_modality_entry(cfg.modality.name).readers())  # the modality's own layouts
    if d.format is not None and d.format not in formats:
        raise ConfigError(f"config key 'data.format' must be one of {formats}, got {d.format!r}")
    if d.eval_samples < 0:
        raise ConfigError(f"config key 'data.eval_samples' must be >= 0, got {d.eval_samples!r}")
    if d.streaming and d.max_records is None:
        raise ConfigError("config key 'data.streaming' = True needs data.max_records (how many rows to stream)")
    if d.max_records is not None and d.max_records < 1:
        raise ConfigError(f"config key 'data.max_records' must be > 0, got {d.max_records!r}")


def read_config_data(path: Optional[str], overrides: Optional[List[str]] = None,
                     data: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The YAML mapping at ``path`` (or a copy of ``data``) with ``overrides`` applied. Raises ConfigError."""
    if data is None:
        if path is None:
            raise ConfigError("no config given")
        if not os.path.isfile(path):
            raise ConfigError(f"config file {path!r} does not exist")
        with open(path, encoding="utf-8") as f:
            try:
                data = yaml.safe_load(f) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"config file {path!r} is not valid YAML: {exc}") from None
        data = _resolve_list_paths(data, os.path.dirname(os.path.abspath(path)), path)
    return apply_overrides(copy.deepcopy(data), parse_overrides(overrides or []))


def item_path_keys(modality_name: Any) -> Tuple[str, ...]:
    """The prompt-item keys that hold file paths for ``modality.name`` (its registry entry's ``item_paths``);
    () for a name that is not registered (the config check reports that)."""
    from diffalign.registry import RegistryError, modalities
    try:
        entry = modalities[modality_name] if isinstance(modality_name, str) else None
    except (KeyError, RegistryError, ImportError):  # the config check names what is wrong with the modality
        return ()
    return tuple(getattr(entry, "item_paths", ()))


def _resolve_list_paths(data: Dict[str, Any], folder: str, path: str) -> Dict[str, Any]:
    """The config file's ``prompts.list`` with the modality's item paths resolved against its folder, so a config
    works from any working directory (an override given on the command line is relative to the working
    directory instead: it is applied afterwards)."""
    prompts = data.get("prompts")
    modality = data.get("modality")
    if not isinstance(prompts, dict) or not isinstance(prompts.get("list"), list) or not isinstance(modality, dict):
        return data
    keys = item_path_keys(modality.get("name"))
    if not keys:
        return data
    from diffalign.rewards.prompts import resolve_item_paths
    try:
        items = [resolve_item_paths(p, keys, folder, f"config file {path!r}, prompts.list[{i}]")
                 if isinstance(p, dict) else p for i, p in enumerate(prompts["list"])]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return dict(data, prompts=dict(prompts, list=items))


def config_prompts(cfg) -> List[Any]:
    """The prompt items of ``cfg.prompts`` (list or file), the modality's item paths resolved: a prompts file's
    against its folder (a config file's list was resolved against the config's folder when it was read)."""
    from diffalign.rewards.prompts import load_prompts
    return load_prompts(cfg.prompts.list, cfg.prompts.file, path_keys=item_path_keys(cfg.modality.name))


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None, num_processes: int = 1,
                data: Optional[Dict[str, Any]] = None) -> TrainConfig:
    """Read YAML (or take ``data``), apply overrides, type-check and validate. Raises ConfigError."""
    cfg = from_dict(TrainConfig, read_config_data(path, overrides, data))
    validate(cfg, num_processes)
    return cfg
