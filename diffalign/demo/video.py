"""``diffalign demo video``: measure the shipped text-to-video demo model, align it, measure again.

The model is the shipped 32x32 image demo model plus AnimateDiff motion modules trained on procedural clips of
the shapes world (diffalign/assets/video_demo_motion, made by scripts/train_video_demo_model.py). The reward is
the temporal compositional reward ``shapes_video`` (colour, shape, count in every frame, plus each object's
direction and smoothness of motion). Stages, as the image demo (:mod:`diffalign.demo.run`):

1. before: sample the held-out clip captions (:func:`video_eval_set`: the same number of clips of each caption
   kind, moving and still) with fixed seeds and score them;
2. align through the trainer with a shipped ``diffalign/configs/demo_video_<algo>.yaml``
   (:func:`diffalign.demo.run.train_stage`: the ``diffalign train`` machinery, the budget in ``train.max_minutes``)
   on the training clip captions;
3. sample and score the same captions and seeds again, and write ``report.json`` / ``report.md`` (the image
   demo's schema with ``modality: video``), ``reward_curve.png``, ``filmstrip.png`` (before/after rows) and every
   clip as ``samples/{before,after}/NNNN.gif`` (and its frames as NNNN.png) with ``samples/prompts.json``.

Scores are computed on 8-bit frames, saved losslessly next to each GIF as ``NNNN.png`` (frames left to right), so
re-scoring those PNGs reproduces the report.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

# the default alignment algorithm (diffalign/configs/demo_video_<algo>.yaml); measurements in the README
DEFAULT_VIDEO_ALGO = "rwr"
CONFIG_PREFIX = "video_"   # demo_video_<algo>.yaml among the demo configs
# evaluation clips per caption kind (moving, still): 2 x 8 clips, 8 distinct held-out captions of each kind (the
# issue's floor); both evaluations sample 16 clips each, so the whole demo fits 20 minutes on 2 shared cores
SAMPLES_PER_KIND = 8
EVAL_BATCH_SIZE = 16
QUICK_SAMPLES_PER_KIND = 2
GIF_SCALE = 4              # a 32-px frame becomes 128 px in the GIFs (whole multiples keep colours exact)
GIF_FPS = 4.0
FILMSTRIP_CLIPS = 6        # before/after rows of the first clip of this many distinct captions


def shipped_motion_adapter() -> str:
    """The folder of the shipped motion modules (a diffusers MotionAdapter)."""
    import diffalign
    return os.path.join(os.path.dirname(os.path.abspath(diffalign.__file__)), "assets", "video_demo_motion")


def video_algos() -> List[str]:
    """Algorithms with a shipped video demo config (diffalign/configs/demo_video_<algo>.yaml)."""
    from diffalign.demo.run import available_algos
    return [a[len(CONFIG_PREFIX):] for a in available_algos("video")]


def spread_captions(captions: Sequence[str], n: int) -> List[str]:
    """``n`` of ``captions``: evenly spaced over the list when it has at least ``n`` (the held-out moving captions
    are ordered by direction, so the first 8 would all move left or right), else every caption, cycled."""
    if n < 1:
        raise ValueError(f"video demo: samples per kind must be >= 1, got {n}")
    if n >= len(captions):
        return [captions[i % len(captions)] for i in range(n)]
    return [captions[i * len(captions) // n] for i in range(n)]


def video_eval_set(samples_per_kind: int = SAMPLES_PER_KIND) -> Tuple[List[str], List[int]]:
    """(captions, seeds): ``samples_per_kind`` held-out captions of each kind (moving, then still; spread over the
    kind's captions by :func:`spread_captions`), seeds SEED_BASE + index."""
    from diffalign.data.shapes_clips import CLIP_KINDS, clip_captions
    from diffalign.demo.run import eval_seeds
    return eval_seeds([c for kind in CLIP_KINDS for c in spread_captions(clip_captions("heldout", kind),
                                                                         samples_per_kind)])


def eval_sampling(config, sampling) -> Tuple[Dict[str, Any], Optional[float]]:
    """(sampler settings, frame_noise_alpha) for the base video sampler from a loaded demo config and its evaluation
    sampling (diffalign.demo.run.evaluation_config): the before evaluation samples as the aligned policy is evaluated
    (steps, eta, guidance and x_T's frame correlation), so before and after differ only in the weights."""
    settings = {"num_steps": sampling.num_steps, "eta": sampling.eta, "guidance_scale": sampling.guidance_scale,
                "batch_size": EVAL_BATCH_SIZE}
    return settings, config.modality.options.get("frame_noise_alpha")


def base_video_sampler(motion_adapter: Optional[str] = None, sampling: Optional[Dict[str, Any]] = None,
                       frame_noise_alpha: Optional[float] = None):
    """The base video model's sampler ``(captions, seeds) -> clips (B, F, 3, H, W)`` with the evaluation settings
    (``sampling`` over the image demo's EVAL_DEFAULTS) and x_T's frame correlation (VideoOptions.frame_noise_alpha)."""
    from diffalign.demo.run import EVAL_DEFAULTS, policy_sampler
    from diffalign.mdp.steps import make_step_rule
    from diffalign.mdp.trajectory import DiffusionPolicy
    from diffalign.modalities.video.adapter import VideoAdapter
    from diffalign.modalities.video.options import VideoOptions
    s = dict(EVAL_DEFAULTS, **(sampling or {}))
    options = VideoOptions(model="demo", motion_adapter=motion_adapter or shipped_motion_adapter(), lora_rank=0,
                           frame_noise_alpha=frame_noise_alpha)
    adapter = VideoAdapter.from_options(options, device="cpu")
    rule = make_step_rule("ddim", adapter.scheduler, s["num_steps"], eta=s["eta"])
    return policy_sampler(DiffusionPolicy(adapter, rule, s["guidance_scale"]), s["batch_size"], desc="sample base")


def clips_uint8(clips: torch.Tensor) -> torch.Tensor:
    """(B, F, 3, H, W) in [0, 1] -> uint8 (B, F, 3, H, W): exactly what the GIFs hold (before enlarging)."""
    if clips.ndim != 5 or clips.shape[2] != 3:
        raise ValueError(f"video demo: clips must be (B, F, 3, H, W), got shape {tuple(clips.shape)}")
    return (clips.float().clamp(0, 1) * 255).round().to(torch.uint8)


def score_video_samples(clips: torch.Tensor, prompts: Sequence[str]) -> Tuple[dict, List[bool], List[float]]:
    """uint8 clips -> (accuracies of :func:`~diffalign.rewards.video_compositional.video_accuracies`, whether each
    clip is correct, each clip's reward)."""
    from diffalign.rewards.video_compositional import score_clips, video_accuracies
    results = score_clips(clips.float() / 255, list(prompts))
    return video_accuracies(results), [r.correct for r in results], [r.reward for r in results]


def evaluate_video(sampler, prompts: Sequence[str], seeds: Sequence[int]):
    """Sample and score: (uint8 clips, accuracies, per-clip correct, per-clip reward)."""
    clips = clips_uint8(sampler(prompts, seeds))
    acc, correct, rewards = score_video_samples(clips, prompts)
    return clips, acc, correct, rewards


def paired_video_report(prompts: Sequence[str], before: Sequence[bool], after: Sequence[bool]) -> Dict[str, Any]:
    """:func:`diffalign.eval.paired.paired_change` over every clip and per caption kind (same captions and seeds)."""
    from diffalign.data.shapes_clips import CLIP_KINDS, clip_kind
    from diffalign.eval.paired import paired_change
    out: Dict[str, Any] = {"all": paired_change(before, after)}
    for kind in CLIP_KINDS:
        idx = [i for i, p in enumerate(prompts) if clip_kind(p) == kind]
        if idx:
            out[kind] = paired_change([before[i] for i in idx], [after[i] for i in idx])
    return out


def save_video_samples(output: str, prompts: Sequence[str], seeds: Sequence[int], clips: Dict[str, torch.Tensor],
                       correct: Dict[str, Sequence[bool]]) -> Dict[str, dict]:
    """samples/{before,after}/NNNN.gif (to watch) and NNNN.png (the scored 8-bit frames left to right, lossless:
    a GIF's palette cannot hold every colour of a noisy clip) and samples/prompts.json (GIF -> prompt, seed,
    verdict, its frames PNG)."""
    from PIL import Image

    from diffalign.eval.video_writers import save_gif
    index: Dict[str, dict] = {}
    for stage, stage_clips in clips.items():
        os.makedirs(os.path.join(output, "samples", stage), exist_ok=True)
        for i, (clip, prompt, seed) in enumerate(zip(stage_clips, prompts, seeds)):
            name, frames = f"{stage}/{i:04d}.gif", f"{stage}/{i:04d}.png"
            save_gif(os.path.join(output, "samples", name), clip.float() / 255, fps=GIF_FPS, scale=GIF_SCALE)
            strip = clip.permute(2, 0, 3, 1).reshape(clip.shape[2], -1, 3)  # (H, F * W, 3)
            Image.fromarray(strip.numpy()).save(os.path.join(output, "samples", frames))
            index[name] = {"prompt": prompt, "seed": int(seed), "correct": bool(correct[stage][i]), "frames": frames}
    with open(os.path.join(output, "samples", "prompts.json"), "w") as f:
        json.dump(index, f, indent=1)
    return index


def read_frames_png(path: str, frames: int) -> torch.Tensor:
    """A frames PNG written by :func:`save_video_samples` -> uint8 (F, 3, H, W), exactly the scored frames."""
    from PIL import Image
    strip = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())  # (H, F * W, 3)
    if strip.shape[1] % frames:
        raise ValueError(f"{path}: width {strip.shape[1]} is not a multiple of {frames} frames")
    return strip.reshape(strip.shape[0], frames, -1, 3).permute(1, 3, 0, 2).contiguous()


def read_gif_clip(path: str) -> torch.Tensor:
    """A GIF written by :func:`save_video_samples` -> uint8 (F, 3, 32, 32) (the enlargement undone; colours as
    the GIF palette kept them). Pillow's GIF writer merges runs of identical frames into one longer frame, so
    each stored frame is repeated by its duration over the writer's frame duration (``GIF_FPS``)."""
    from PIL import Image, ImageSequence
    frames = []
    with Image.open(path) as gif:
        for frame in ImageSequence.Iterator(gif):
            repeat = max(1, round(frame.info.get("duration", 1000.0 / GIF_FPS) * GIF_FPS / 1000.0))
            frames += [np.asarray(frame.convert("RGB"))[::GIF_SCALE, ::GIF_SCALE]] * repeat
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def video_markdown(report: dict) -> str:
    """report.md of a video demo run."""
    from diffalign.demo.report import modality_markdown
    return modality_markdown(
        report, "video", "clips", "held-out captions (every attribute of the caption holds)",
        "Moving and still captions have the same number of clips, so accuracy is the mean of the two kinds'.",
        "![before/after](filmstrip.png)",
        "Every clip is a GIF in `samples/before` and `samples/after`; `samples/prompts.json` maps each file to "
        "its caption, seed and verdict.")


def _filmstrip_indices(prompts: Sequence[str], n: int) -> List[int]:
    """The first clip of each of up to ``n`` distinct captions, alternating the kinds (moving, still, ...)."""
    from diffalign.data.shapes_clips import CLIP_KINDS, clip_kind
    firsts: Dict[str, List[int]] = {k: [] for k in CLIP_KINDS}
    seen = set()
    for i, p in enumerate(prompts):
        if p not in seen:
            seen.add(p)
            firsts[clip_kind(p)].append(i)
    out = [i for group in zip(*firsts.values()) for i in group]
    out += [i for k in CLIP_KINDS for i in firsts[k] if i not in out]
    return out[:n]


def write_video_outputs(output: str, report: dict, prompts: Sequence[str], seeds: Sequence[int],
                        clips: Dict[str, torch.Tensor], correct: Dict[str, Sequence[bool]],
                        rewards: Dict[str, Sequence[float]]) -> None:
    """Everything the video demo writes, from the measured report, the uint8 clips and per-clip verdicts."""
    from diffalign.demo.report import save_curve
    from diffalign.eval.video_writers import save_filmstrip
    save_video_samples(output, prompts, seeds, clips, correct)
    idx = _filmstrip_indices(prompts, FILMSTRIP_CLIPS)
    save_filmstrip(os.path.join(output, "filmstrip.png"), [clips["before"][i].float() / 255 for i in idx],
                   [clips["after"][i].float() / 255 for i in idx], [prompts[i] for i in idx])
    save_curve(os.path.join(output, "reward_curve.png"), report["curve"], float(np.mean(rewards["before"])),
               float(np.mean(rewards["after"])), f"video, algo {report['algo']}: shapes_video reward")
    report["files"] = {"filmstrip": "filmstrip.png", "reward_curve": "reward_curve.png", "samples": "samples",
                       "prompts": "samples/prompts.json", "markdown": "report.md"}
    with open(os.path.join(output, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(output, "report.md"), "w") as f:
        f.write(video_markdown(report))


def run_video_demo(output: str, algo: str = DEFAULT_VIDEO_ALGO, quick: bool = False, minutes: float = 10.0,
                   samples_per_kind: int = SAMPLES_PER_KIND, seed: int = 0,
                   overrides: Optional[Dict[str, Any]] = None, motion_adapter: Optional[str] = None) -> dict:
    """Before -> align with ``demo_video_<algo>.yaml`` -> after -> report in ``output``; returns the report."""
    from diffalign.data.shapes_clips import balanced_clip_prompts
    from diffalign.demo.run import DemoContext, demo_precision, evaluation_config, measure_alignment, train_stage
    from diffalign.trainer.precision import cpu_info, log_choice, resolve_precision
    if algo not in video_algos():
        raise ValueError(f"unknown video demo algorithm {algo!r}; choose one of {video_algos()}")
    motion = motion_adapter or shipped_motion_adapter()
    overrides = dict(overrides or {})
    config_name = CONFIG_PREFIX + algo
    t_total = time.perf_counter()
    choice = resolve_precision(demo_precision(config_name, overrides), "cpu")
    log_choice(choice)
    if quick:
        samples_per_kind = QUICK_SAMPLES_PER_KIND
    os.makedirs(output, exist_ok=True)
    prompts, seeds = video_eval_set(samples_per_kind)
    train_prompts = list(balanced_clip_prompts("train", None))
    # the trainer loads the same shipped model: the motion adapter goes in as an override of the config
    overrides["modality.options.motion_adapter"] = motion
    # the before evaluation samples with the config's settings (quick's overrides included), as the after one does
    config, evaluation = evaluation_config(config_name, output, train_prompts, overrides, quick)
    sampling, frame_noise_alpha = eval_sampling(config, evaluation)
    if quick:
        sampling["batch_size"] = 8
    stage = train_stage(config_name, overrides)
    ctx = DemoContext(model="demo", reward=None, train_prompts=train_prompts,
                      output=output, minutes=minutes, quick=quick, seed=seed)
    (before_clips, before, before_ok, before_r), result, (after_clips, after, after_ok, after_r), seconds = \
        measure_alignment(lambda sampler: evaluate_video(sampler, prompts, seeds),
                          base_video_sampler(motion, sampling, frame_noise_alpha), stage, ctx, choice.precision)
    seconds["total"] = time.perf_counter() - t_total

    report = {
        "modality": "video",
        "algo": algo,
        "model": {"image": "demo", "motion_adapter": motion},
        "before": before,
        "after": after,
        "delta": {k: after[k] - before[k] for k in before if k in after and k != "n"},
        "paired": paired_video_report(prompts, before_ok, after_ok),
        "seconds": seconds,
        "curve": result.curve,
        "info": result.info,
        "eval": {"prompts": len(set(prompts)), "samples": len(prompts), "samples_per_kind": samples_per_kind,
                 "seeds": [seeds[0], seeds[-1]], "sampling": sampling,
                 "frame_noise_alpha": frame_noise_alpha, "split": "heldout", "frames": int(before_clips.shape[1])},
        "quick": quick,
        "torch_threads": torch.get_num_threads(),
        "hardware": cpu_info(),
        "precision": {"requested": choice.requested, "chosen": choice.precision, "reason": choice.reason,
                      "bf16_speedup_probe": choice.probe_speedup},
    }
    write_video_outputs(output, report, prompts, seeds, {"before": before_clips, "after": after_clips},
                        {"before": before_ok, "after": after_ok}, {"before": before_r, "after": after_r})
    return report
