"""``diffalign eval samples --model CONFIG [--checkpoint DIR] [--prompts ...]``: evaluate a model's samples.

The model is a training config (a path or a shipped name such as ``ddpo_tiny``): its modality section
names the base model (``tiny``, a hub id, a local path), its sampling section the sampler. A
``--checkpoint`` adds trained weights: a trainer checkpoint folder (``.../checkpoints/epoch_000009``),
a run's output_dir (its latest checkpoint) or a LoRA folder in diffusers' format (``OUTPUT_DIR/final``).

Sample ``k`` of prompt ``j`` is drawn with the seed ``derive_seed(seed, "eval", j, k)``, so a sample
depends only on (seed, prompt index, k): two models evaluated with the same seed and prompts see the
same initial noise, and adding prompts does not change the others' samples.

Writes OUT/report.json, OUT/report.md (with samples.png and reward_<name>.png) and OUT/samples/:
- rewards: each ``--reward`` (default: the config's reward.name and reward.kwargs): mean, std,
  min, max over all samples and mean/std per prompt; the per-sample scores sit next to each sample.
- clip_score: the ``clip_score`` reward (``--clip-model PATH_OR_ID``, or a ``--reward clip_score``).
- fid / kid: against ``--reference-images DIR`` (resized to the samples' resolution), on features
  of Inception v3 from ``--inception FILE`` or of ``--feature-network package.module:callable``.
- inception_score: from ``--inception``'s logits, or ``--classifier package.module:callable``.
- diversity: per prompt, the mean pairwise RMS pixel distance between its samples (0: identical
  samples), averaged over prompts; with a feature network also the mean pairwise cosine distance of
  the features. A collapse of diversity under reward optimisation is the reward-hacking signature.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from diffalign.rewards.prompts import prompt_key

HELP = "a model's samples: rewards per prompt, CLIP score, FID/KID/IS, diversity; JSON + markdown report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "--config", dest="model", required=True,
                   help="a training config (path or shipped name, e.g. ddpo_tiny) whose modality section gives the model")
    p.add_argument("--checkpoint", default=None,
                   help="trained weights: a checkpoint folder, a run's output_dir (latest checkpoint) or a LoRA folder")
    p.add_argument("--prompts", nargs="+", default=None,
                   help="a prompt file (one per line) or the prompts themselves; default: the config's prompts")
    p.add_argument("--samples-per-prompt", type=int, default=4)
    p.add_argument("--seed", type=int, default=None, help="base seed of the samples (default: the config's seed)")
    p.add_argument("--reward", action="append", default=None, metavar="NAME[=JSON_KWARGS]",
                   help="a reward to score with, repeatable, e.g. --reward 'color_target={\"target\": [1, 0, 0]}'; "
                        "default: the config's reward")
    p.add_argument("--clip-model", default=None, help="score CLIP score with this CLIP model (hub id or local path)")
    p.add_argument("--reference-images", default=None, help="a folder of reference images for FID / KID")
    p.add_argument("--max-reference", type=int, default=None, help="use at most this many reference images")
    p.add_argument("--inception", default=None,
                   help="local torch-fidelity Inception v3 weights file (weights-inception-2015-12-05-6726825d.pth) "
                        "for FID / KID / IS")
    p.add_argument("--feature-network", default=None, metavar="MODULE:CALLABLE",
                   help="your own feature extractor for FID / KID (images (B,3,H,W) in [0,1] -> (B,d)); "
                        "replaces Inception features")
    p.add_argument("--classifier", default=None, metavar="MODULE:CALLABLE",
                   help="your own classifier for the Inception score (images -> logits (B,C)); replaces Inception's")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, default=1000)
    p.add_argument("--is-splits", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=None, help="samples per sampling batch (default: the config's)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the config, e.g. sampling.num_steps=20")


# ---- inputs ----------------------------------------------------------------------------------------------
def parse_reward_spec(spec: str) -> Tuple[str, Dict[str, Any]]:
    """``name`` or ``name={"json": "kwargs"}`` -> (name, kwargs)."""
    name, sep, raw = spec.partition("=")
    if not sep:
        return spec, {}
    try:
        kwargs = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--reward {spec!r}: the keyword arguments after '=' are not JSON ({exc})") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--reward {spec!r}: the keyword arguments after '=' must be a JSON object")
    return name, kwargs


def resolve_prompts(given: Optional[Sequence[str]], cfg) -> List[str]:
    from diffalign.config import config_prompts, item_path_keys
    from diffalign.rewards import load_prompts
    if not given:
        return config_prompts(cfg)
    keys = item_path_keys(cfg.modality.name) if cfg is not None else ()  # a prompts file's paths: its folder
    if len(given) == 1 and os.path.isfile(given[0]):
        return load_prompts(file=given[0], path_keys=keys)
    return load_prompts(list(given), path_keys=keys)


def load_checkpoint_into(adapter, path: str) -> str:
    """Load trained weights into ``adapter``; returns the folder actually read (see module doc)."""
    from safetensors.torch import load_file

    from diffalign.trainer.checkpoint import latest_checkpoint
    if not os.path.isdir(path):
        raise ValueError(f"--checkpoint {path!r} is not a folder")
    if not os.path.isfile(os.path.join(path, "weights.safetensors")):
        latest = latest_checkpoint(path)
        if latest is not None:
            path = latest
    weights = os.path.join(path, "weights.safetensors")
    if os.path.isfile(weights):
        adapter.load_trainable_state_dict({k: v.to(adapter.device) for k, v in load_file(weights).items()})
        return path
    lora = os.path.join(path, "pytorch_lora_weights.safetensors")
    if os.path.isfile(lora):
        from diffusers.utils import convert_unet_state_dict_to_peft
        state = load_file(lora)
        # diffusers' LoRA files prefix the denoiser's keys ("unet." / "transformer.") and name LoRA layers its own way
        prefix = next((p for p in ("unet.", "transformer.") if all(k.startswith(p) for k in state)), "")
        state = convert_unet_state_dict_to_peft({k[len(prefix):]: v for k, v in state.items()})
        adapter.load_trainable_state_dict({k: v.to(adapter.device) for k, v in state.items()})
        return path
    raise ValueError(f"--checkpoint {path!r}: no weights.safetensors (a trainer checkpoint), checkpoints/ (a run "
                     "folder) or pytorch_lora_weights.safetensors (a LoRA folder) in it")


# ---- statistics ------------------------------------------------------------------------------------------
def reward_stats(scores: torch.Tensor, prompts: Sequence[str]) -> Dict[str, Any]:
    """mean / std (population) / min / max over all samples, and mean / std / n per prompt (in first-seen order)."""
    s = scores.double()
    per: Dict[str, List[float]] = {}
    for p, v in zip(prompts, s.tolist()):
        per.setdefault(prompt_key(p), []).append(v)  # mapping items (a pocket) by their stable key

    def _ms(values):
        t = torch.tensor(values, dtype=torch.float64)
        return {"mean": float(t.mean()), "std": float(t.std(unbiased=False)), "n": len(values)}

    return {"mean": float(s.mean()), "std": float(s.std(unbiased=False)), "min": float(s.min()), "max": float(s.max()),
            "per_prompt": {p: _ms(v) for p, v in per.items()}}


def score_rewards(rewards: Sequence[Tuple[str, Dict[str, Any]]], adapter, samples,
                  prompts: Sequence[str], batch_size: int, device, progress: bool) -> Dict[str, torch.Tensor]:
    """{name: scores (N,)} for each (name, kwargs), in batches, each checked (one finite score per sample)."""
    from tqdm.auto import tqdm

    from diffalign.rewards import bind_reward_kwargs, call_reward, resolve_reward
    out = {}
    for name, kwargs in rewards:
        fn = bind_reward_kwargs(resolve_reward(name, adapter.rewards()), name, kwargs)
        parts = []
        for start in tqdm(range(0, len(samples), batch_size), desc=f"reward {name}", disable=not progress,
                          leave=False):
            chunk = samples[start:start + batch_size]  # a tensor batch, or a list (molecules; None = invalid)
            chunk = chunk.to(device) if isinstance(chunk, torch.Tensor) else chunk
            parts.append(call_reward(fn, chunk, prompts[start:start + batch_size], device).cpu())
        out[name] = torch.cat(parts)
    return out


def _unique_names(rewards: Sequence[Tuple[str, Dict[str, Any]]]) -> List[str]:
    """Report keys: the reward's name, or name[kwargs] where one name is used with several kwargs."""
    names = [n for n, _ in rewards]
    return [n if names.count(n) == 1 else f"{n}{json.dumps(k, sort_keys=True)}" for n, k in rewards]


# ---- the command -----------------------------------------------------------------------------------------
def evaluate(args) -> Dict[str, Any]:
    """Everything ``run`` does, returning the report dictionary (also written to args.out)."""
    from diffalign.config import load_config, resolve_config_path
    from diffalign.inference.feedback import sample_decoded
    from diffalign.eval import metrics
    from diffalign.eval import report as rep
    from diffalign.trainer.builders import build_adapter, build_policy
    from diffalign.seeding import derive_seed

    progress = not args.no_progress
    if args.samples_per_prompt < 1:
        raise ValueError(f"--samples-per-prompt must be >= 1, got {args.samples_per_prompt}")
    config_path = resolve_config_path(args.model)
    overrides = list(args.overrides or [])
    if not any(o.startswith("output_dir=") for o in overrides):
        overrides.append(f"output_dir={args.out}")  # required by the config check; nothing is written there but ours
    cfg = load_config(config_path, overrides)
    if args.batch_size is not None:  # set after the check: the training-only batch splits do not apply here
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        cfg.sampling.batch_size = args.batch_size
    seed = cfg.seed if args.seed is None else args.seed
    prompts = resolve_prompts(args.prompts, cfg)
    rewards = [parse_reward_spec(s) for s in args.reward] if args.reward else [(cfg.reward.name, dict(cfg.reward.kwargs))]
    if args.clip_model is not None:
        rewards.append(("clip_score", {"model": args.clip_model}))
    if args.reference_images and not (args.inception or args.feature_network):
        raise ValueError("--reference-images (FID / KID) needs a feature network: --inception FILE (local Inception v3 "
                         "weights) or --feature-network package.module:callable")
    # load the metric networks before sampling, so a missing weights file fails in seconds, not after sampling
    features_net = classifier = None
    feature_name = None
    if args.inception:
        features_net, classifier = metrics.load_inception(args.inception)
        feature_name = f"inception-v3 ({args.inception})"
    if args.feature_network:
        features_net = metrics.load_user_network(args.feature_network, "--feature-network")
        feature_name = args.feature_network
    if args.classifier:
        classifier = metrics.load_user_network(args.classifier, "--classifier")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    os.makedirs(args.out, exist_ok=True)
    timing: Dict[str, float] = {}
    t0 = time.perf_counter()
    adapter = build_adapter(cfg, prompts, device)
    checkpoint = load_checkpoint_into(adapter, args.checkpoint) if args.checkpoint else None
    policy = build_policy(cfg, adapter)
    all_prompts = [p for p in prompts for _ in range(args.samples_per_prompt)]
    seeds = [derive_seed(seed, "eval", j, k) for j in range(len(prompts)) for k in range(args.samples_per_prompt)]
    timing["load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    samples = sample_decoded(cfg, adapter, policy, all_prompts, seeds, progress=progress, desc="sampling")
    timing["sampling_s"] = time.perf_counter() - t0
    tensors = isinstance(samples, torch.Tensor)

    t0 = time.perf_counter()
    scores = score_rewards(rewards, adapter, samples, all_prompts, cfg.sampling.batch_size, device, progress)
    keys = _unique_names(rewards)
    scores = dict(zip(keys, scores.values()))
    timing["rewards_s"] = time.perf_counter() - t0

    folder = os.path.join(args.out, "samples")
    os.makedirs(folder, exist_ok=True)
    records = []
    for i, (p, s) in enumerate(zip(all_prompts, seeds)):
        # an invalid sample (decoded to None: a molecule without perceivable bonds) has no file
        name = None if samples[i] is None else os.path.join("samples", adapter.save_sample(samples[i], folder, f"{i:06d}"))
        records.append({"index": i, "prompt": p, "seed": s, "file": name,
                        "rewards": {k: float(v[i]) for k, v in scores.items()}})

    report: Dict[str, Any] = {
        "model": {"config": config_path, "checkpoint": checkpoint, "modality": cfg.modality.name,
                  "options": dict(cfg.modality.options)},
        "seed": seed, "samples_per_prompt": args.samples_per_prompt, "prompts": prompts,
        "rewards": {k: reward_stats(v, all_prompts) for k, v in scores.items()},
        "clip_score": None, "fid": None, "fid_samples": None, "kid": None, "inception_score": None,
        "feature_network": feature_name, "classifier": args.classifier or (feature_name if args.inception else None),
        "diversity": {"pixel": metrics.pairwise_diversity(samples, [prompt_key(p) for p in all_prompts], "rms")
                      if tensors else None, "feature": None},  # element-wise distances need a tensor batch
        "samples": records, "config": cfg.to_dict(), "timing": timing,
    }
    clip_keys = [k for (n, _), k in zip(rewards, keys) if n == "clip_score"]
    if clip_keys:
        report["clip_score"] = report["rewards"][clip_keys[-1]]

    images = tensors and samples.ndim == 4 and samples.shape[1] == 3
    t0 = time.perf_counter()
    if (features_net is not None or classifier is not None) and not images:
        raise ValueError(f"FID / KID / IS need RGB images; the {cfg.modality.name} modality's samples are "
                         + (f"of shape {tuple(samples.shape[1:])}" if tensors else "not a tensor batch"))
    if features_net is not None:
        fake = metrics.extract_features(features_net, samples, cfg.sampling.batch_size, device, "features (samples)",
                                        progress)
        report["diversity"]["feature"] = metrics.pairwise_diversity(fake, all_prompts, "cosine")
        if args.reference_images:
            ref = metrics.load_image_folder(args.reference_images, samples.shape[-1], args.max_reference)
            real = metrics.extract_features(features_net, ref, cfg.sampling.batch_size, device,
                                            "features (reference)", progress)
            report["fid"] = metrics.frechet_distance(real, fake)
            report["fid_samples"] = {"real": real.shape[0], "generated": fake.shape[0]}
            report["kid"] = metrics.kernel_inception_distance(real, fake, args.kid_subsets, args.kid_subset_size, seed)
    if classifier is not None:
        logits = metrics.extract_features(classifier, samples, cfg.sampling.batch_size, device, "classifier", progress)
        report["inception_score"] = metrics.inception_score(logits, args.is_splits, seed)
    timing["metrics_s"] = time.perf_counter() - t0

    grid = rep.save_grid(samples, os.path.join(args.out, "samples.png"), args.samples_per_prompt) if images else None
    plots = rep.plot_rewards(report, args.out)
    with open(os.path.join(args.out, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    rep.write_markdown(report, args.out, grid, plots)
    return report


def _summary(report: Dict[str, Any], out: str) -> str:
    parts = [f"{k} {v['mean']:.4g} ± {v['std']:.4g}" for k, v in report["rewards"].items()]
    for key in ("fid",):
        if report.get(key) is not None:
            parts.append(f"FID {report[key]:.4g}")
    if report.get("kid") is not None:
        parts.append(f"KID {report['kid']['mean']:.4g}")
    if report.get("inception_score") is not None:
        parts.append(f"IS {report['inception_score']['mean']:.4g}")
    div = (report["diversity"]["pixel"] or {}).get("mean")  # None where samples are not a tensor batch
    if div is not None:
        parts.append(f"diversity {div:.4g}")
    n = len(report["samples"])
    return f"eval samples: {n} samples ({len(report['prompts'])} prompts): " + ", ".join(parts) + f" -> {out}/report.md"


def run(args) -> int:
    from diffalign.config import ConfigError
    try:
        report = evaluate(args)
    except ConfigError as exc:
        print(f"diffalign eval samples: bad config: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"diffalign eval samples: {exc}", file=sys.stderr)
        return 1
    print(_summary(report, args.out))
    return 0
