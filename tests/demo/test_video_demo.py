"""``diffalign demo video``: the --quick run end to end, its outputs, the shipped motion model, the CLI's errors."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from diffalign.cli import main
from diffalign.data.shapes_clips import CLIP_KINDS, clip_kind, clip_split_of
from diffalign.demo import run as demo_run
from diffalign.demo import video
from diffalign.eval.paired import paired_change
from diffalign.rewards.video_compositional import VIDEO_ATTRIBUTES


def _cli(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("video_demo"))
    assert _cli(["demo", "video", "--quick", "--output", out]) == 0
    with open(os.path.join(out, "report.json")) as f:
        return out, json.load(f)


def test_quick_video_demo_writes_the_image_demos_report_schema(quick_run):
    out, report = quick_run
    for name in ("report.json", "report.md", "reward_curve.png", "filmstrip.png", "samples/prompts.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert report["modality"] == "video" and report["algo"] == video.DEFAULT_VIDEO_ALGO and report["quick"]
    assert {"model", "flags", "torch_threads"} <= set(report["hardware"])
    assert report["precision"]["chosen"] in ("bf16", "fp32", "no")
    assert set(report["seconds"]) == {"before_eval", "after_stage", "after_eval", "total"}
    for stage in ("before", "after"):
        keys = {"accuracy", "reward", *VIDEO_ATTRIBUTES, *(f"accuracy/{k}" for k in CLIP_KINDS)}
        assert keys <= set(report[stage]), stage
    # alignment went through the trainer with the shipped config and the shipped motion modules
    assert report["info"]["config"].endswith("demo_video_rwr.yaml") and report["info"]["epochs"] >= 1
    assert report["info"]["overrides"]["modality.options.motion_adapter"] == video.shipped_motion_adapter()
    # before and after sampled with the config's settings (quick's 4 steps) from correlated x_T
    assert report["eval"]["sampling"]["num_steps"] == demo_run.QUICK["overrides"]["sampling.num_steps"]
    assert report["eval"]["sampling"]["eta"] == 0.0 and report["eval"]["frame_noise_alpha"] == 19
    assert os.path.isfile(report["info"]["metrics"])


def test_quick_video_demo_gifs_reproduce_the_report(quick_run):
    out, report = quick_run
    with open(os.path.join(out, "samples", "prompts.json")) as f:
        index = json.load(f)
    n = report["eval"]["samples"]
    assert n == 2 * video.QUICK_SAMPLES_PER_KIND and len(index) == 2 * n
    verdicts = {}
    for stage in ("before", "after"):
        names = [f"{stage}/{i:04d}.gif" for i in range(n)]
        clips = torch.stack([video.read_frames_png(os.path.join(out, "samples", index[name]["frames"]), 8)
                             for name in names])
        assert clips.shape == (n, 8, 3, 32, 32)
        for name, clip in zip(names, clips):  # each GIF shows the clip's 8 frames
            assert video.read_gif_clip(os.path.join(out, "samples", name)).shape == clip.shape
        prompts = [index[name]["prompt"] for name in names]
        acc, correct, _ = video.score_video_samples(clips, prompts)
        for k, v in report[stage].items():
            assert acc[k] == pytest.approx(v, abs=1e-9), (stage, k)
        assert correct == [index[name]["correct"] for name in names]
        verdicts[stage] = correct
    # the same captions and seeds before and after, and the paired test is over exactly these verdicts
    assert [index[f"before/{i:04d}.gif"]["seed"] for i in range(n)] == \
        [index[f"after/{i:04d}.gif"]["seed"] for i in range(n)] == [demo_run.SEED_BASE + i for i in range(n)]
    assert report["paired"]["all"] == json.loads(json.dumps(paired_change(verdicts["before"], verdicts["after"])))


def test_eval_set_holds_out_and_balances_the_kinds():
    prompts, seeds = video.video_eval_set(video.SAMPLES_PER_KIND)
    kinds = [clip_kind(p) for p in prompts]
    assert kinds == ["moving"] * video.SAMPLES_PER_KIND + ["still"] * video.SAMPLES_PER_KIND
    assert all(clip_split_of(p) == "heldout" for p in prompts)
    assert seeds == [demo_run.SEED_BASE + i for i in range(len(prompts))]
    for kind in CLIP_KINDS:  # the issue's floor: at least 8 held-out captions of each kind, all of them evaluated
        assert len({p for p in prompts if clip_kind(p) == kind}) >= 8


def test_eval_set_spreads_over_the_directions():
    prompts, _ = video.video_eval_set(8)
    moving = [p for p in prompts if clip_kind(p) == "moving"]
    assert {p.rsplit(" ", 1)[1] for p in moving} == {"left", "right", "up", "down"}
    assert video.spread_captions(["a", "b", "c", "d"], 2) == ["a", "c"]
    assert video.spread_captions(["a", "b"], 3) == ["a", "b", "a"]
    with pytest.raises(ValueError, match="samples per kind"):
        video.spread_captions(["a"], 0)


def test_paired_report_splits_by_kind():
    prompts = ["a red circle moving up", "a red circle", "a blue square moving left", "two green triangles"]
    before, after = [False, True, False, False], [True, True, False, True]
    out = video.paired_video_report(prompts, before, after)
    assert out["all"] == paired_change(before, after)
    assert out["moving"] == paired_change([False, False], [True, False])
    assert out["still"] == paired_change([True, False], [True, True])


def test_clips_uint8_and_gif_round_trip(tmp_path):
    clip = torch.rand(1, 8, 3, 32, 32)
    clip[0, :, :, :16] = 0.0  # black, as the shapes world
    u8 = video.clips_uint8(clip)
    assert u8.dtype == torch.uint8 and torch.equal(u8, (clip * 255).round().to(torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, F, 3, H, W\)"):
        video.clips_uint8(torch.rand(8, 3, 32, 32))
    # palette-exact GIF: few colours, as a shapes clip has
    few = torch.zeros(8, 3, 32, 32, dtype=torch.uint8)
    few[:, 0, 4:10, 4:10] = 255
    few[:, 2, 20:30, 3:9] = 200
    index = video.save_video_samples(str(tmp_path), ["a red circle"], [7], {"before": few[None]},
                                     {"before": [True]})
    assert index == {"before/0000.gif": {"prompt": "a red circle", "seed": 7, "correct": True,
                                         "frames": "before/0000.png"}}
    assert torch.equal(video.read_gif_clip(str(tmp_path / "samples" / "before" / "0000.gif")), few)
    # the frames PNG is exact for any colours (a GIF palette holds 256)
    noisy = (torch.rand(1, 8, 3, 32, 32) * 255).to(torch.uint8)
    video.save_video_samples(str(tmp_path / "noisy"), ["a red circle"], [7], {"after": noisy}, {"after": [False]})
    assert torch.equal(video.read_frames_png(str(tmp_path / "noisy" / "samples" / "after" / "0000.png"), 8), noisy[0])
    with pytest.raises(ValueError, match="not a multiple of 3 frames"):
        video.read_frames_png(str(tmp_path / "noisy" / "samples" / "after" / "0000.png"), 3)


def test_filmstrip_rows_alternate_the_kinds():
    prompts = ["a red circle moving up", "a red circle moving up", "a blue square moving left", "a red circle",
               "two green triangles"]
    assert video._filmstrip_indices(prompts, 4) == [0, 3, 2, 4]
    assert video._filmstrip_indices(prompts, 1) == [0]


def test_video_configs_are_separate_from_the_image_demos():
    assert not any(a.startswith("video_") for a in demo_run.available_algos())
    assert {"rwr", "ddpo"} <= set(video.video_algos()) and video.DEFAULT_VIDEO_ALGO in video.video_algos()
    with pytest.raises(ValueError, match="unknown demo modality"):
        demo_run.available_algos("sound")
    for algo in video.video_algos():
        cfg = demo_run.load_demo_config("video_" + algo, "/tmp/unused", ["a red circle moving up"],
                                        overrides={"modality.options.motion_adapter": video.shipped_motion_adapter()})
        assert cfg.modality.name == "video" and cfg.reward.name == "shapes_video"
        # the before evaluation samples as the aligned policy does: the config's steps, eta, guidance and x_T
        sampling, alpha = video.eval_sampling(cfg, cfg.sampling)
        s = cfg.sampling
        assert (sampling["num_steps"], sampling["eta"], sampling["guidance_scale"]) == \
            (s.num_steps, s.eta, s.guidance_scale), algo
        assert alpha == cfg.modality.options["frame_noise_alpha"] == 19, algo
        # ... or, with the demo option eval_sampling, as the option says over them
        six = demo_run.evaluation_sampling(cfg, {"eval_sampling": {"num_steps": 6}})
        assert video.eval_sampling(cfg, six)[0]["num_steps"] == 6
    rwr = demo_run.load_demo_config("video_rwr", "/tmp/unused", ["a red circle moving up"])
    assert rwr.sampling.eta == 0.0  # the default demo samples deterministically from correlated x_T


def test_shipped_motion_model_is_trained_small_and_documented():
    folder = video.shipped_motion_adapter()
    weights = os.path.join(folder, "diffusion_pytorch_model.safetensors")
    assert os.path.getsize(weights) <= 10 * 2 ** 20
    with open(os.path.join(folder, "diffalign_video_demo.json")) as f:
        meta = json.load(f)
    assert meta["command"].startswith("OMP_NUM_THREADS=1 python scripts/train_video_demo_model.py")
    assert {"seed", "steps", "train_wall_seconds", "cpu"} <= set(meta) and meta["steps"] >= 1
    # trained: the zero-initialised output projections moved
    state = load_file(weights)
    outs = [v for k, v in state.items() if k.endswith("proj_out.weight")]
    assert outs and all(v.abs().sum() > 0 for v in outs)


@pytest.mark.parametrize("argv,needle", [(["sound"], "'sound'"), (["video", "--algo", "nope"], "'nope'"),
                                         (["video", "--method", "best_of_n"], "--method"),
                                         (["video", "--minutes", "0"], "--minutes"),
                                         (["video", "--samples-per-kind", "0"], "--samples-per-kind"),
                                         (["video", "oops"], "dotted.key=value")])
def test_cli_rejects_bad_video_arguments(argv, needle, tmp_path, capsys):
    assert _cli(["demo"] + argv + ["--output", str(tmp_path)]) == 2
    assert needle in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_first_positional_override_still_means_the_image_demo(tmp_path, capsys):
    # `diffalign demo epochs=1` (no modality) stays the image demo with that override: an image --algo error
    assert _cli(["demo", "epochs=1", "--algo", "nope", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "diffalign demo:" in err and "rwr" in err and "video" not in err


def _training_script():
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "scripts", "train_video_demo_model.py")
    spec = importlib.util.spec_from_file_location("train_video_demo_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_script_trains_motion_modules_on_training_clips(tmp_path):
    from diffusers import MotionAdapter
    from diffalign.modalities.image.demo_model import load_demo_model
    from diffalign.modalities.video.demo import MOTION_WORDS, load_motion_words
    script = _training_script()
    clips, captions = script.render_clips(8, seed=0, frames=8, moving_fraction=0.75)
    assert clips.shape == (8, 3, 8, 32, 32) and clips.min() >= -1 and clips.max() <= 1
    assert all(clip_split_of(c) == "train" for c in captions)
    assert [clip_kind(c) for c in captions].count("moving") == 6  # round(8 * 0.75), the rest still
    assert [clip_kind(c) for c in script.render_clips(5, seed=0, frames=8, moving_fraction=0.0)[1]] == ["still"] * 5
    out = tmp_path / "motion"
    assert script.main(["--output", str(out), "--steps", "2", "--num-clips", "4", "--batch-size", "2",
                        "--warmup", "1", "--moving-fraction", "1", "--caption-dropout", "0"]) == 0
    with open(out / script.METADATA) as f:
        meta = json.load(f)
    assert meta["steps"] == 2 and meta["seed"] == 0 and "--steps 2" in meta["command"]
    assert meta["trainable_params"] > 0 and {"model", "flags"} <= set(meta["cpu"])
    assert meta["motion_words"] == list(MOTION_WORDS) and meta["moving_fraction"] == 1.0
    adapter = MotionAdapter.from_pretrained(str(out))  # a diffusers MotionAdapter folder
    outs = [m.weight for n, m in adapter.named_modules() if n.endswith("proj_out")]
    assert outs and all(w.abs().sum() > 0 for w in outs)  # the zero-initialised projections moved
    # every clip moved, so "moving" and a direction word trained away from their <unk> start
    words, rows = load_motion_words(str(out))
    _, text_encoder, *_ = load_demo_model()
    unk = text_encoder.get_input_embeddings().weight[3].detach()
    assert words == list(MOTION_WORDS) and not torch.equal(rows[0], unk)
    # --init continues from those modules (and their words); --frame-noise-alpha trains on PYoCo's mixed noise
    more = tmp_path / "more"
    assert script.main(["--output", str(more), "--steps", "1", "--num-clips", "2", "--batch-size", "2", "--warmup",
                        "1", "--init", str(out), "--frame-noise-alpha", "19", "--lr", "1e-9", "--ema", "0"]) == 0
    with open(more / script.METADATA) as f:
        meta = json.load(f)
    assert meta["frame_noise_alpha"] == 19.0 and meta["init"] == str(out)
    again = MotionAdapter.from_pretrained(str(more))
    start = dict(adapter.named_parameters())
    assert all(torch.allclose(p, start[n], atol=1e-6) for n, p in again.named_parameters())  # lr ~0: where it began
    assert torch.allclose(load_motion_words(str(more))[1], rows, atol=1e-6)
    for argv in (["--caption-dropout", "1.0"], ["--moving-fraction", "1.5"], ["--frame-noise-alpha", "-1"],
                 ["--init", str(tmp_path / "nowhere")]):
        with pytest.raises(SystemExit):
            script.parse_args(argv)
