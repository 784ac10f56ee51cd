"""Video rewards: per-frame reductions against hand computations, frame subsampling, temporal consistency, X-CLIP on a
tiny random config, and the shapes world's temporal compositional reward. Nothing is downloaded."""
import math

import numpy as np
import pytest
import torch

from diffalign import registry
from diffalign.data import shapes_clips as C
from diffalign.rewards import MissingRewardWeights, bind_reward_kwargs, call_reward, load_reward, resolve_reward
from diffalign.rewards import temporal as T
from diffalign.rewards import video as V
from diffalign.rewards import video_compositional as VC
from diffalign.rewards import video_text as X
from diffalign.rewards.base import CLIP_MEAN, CLIP_STD, normalize
from diffalign.rewards.testing import clip_tokenizer, tiny_clip_model, tiny_clip_score


def level_video(values):
    """A float64 video whose frame (b, t) is the constant values[b][t]: (B, F, 3, 4, 4)."""
    v = torch.tensor(values, dtype=torch.float64)
    return v[:, :, None, None, None].expand(*v.shape, 3, 4, 4).clone()


def mean_pixel(images, prompts):  # an image reward with a closed form: the mean pixel, float64 kept
    return images.mean(dim=(1, 2, 3))


VALUES = [[0.1, 0.5, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4], [0.6, 0.6, 0.1, 0.9, 0.3, 0.5, 0.2, 0.7]]


# ---------------------------------------------------------------- per-frame reductions

def test_mean_and_min_match_hand_computation():
    video = level_video(VALUES)
    mean = V.PerFrameReward(mean_pixel, reduce="mean")
    low = V.PerFrameReward(mean_pixel, reduce="min")
    for b, row in enumerate(VALUES):
        assert mean(video)[b].item() == pytest.approx(sum(row) / len(row), abs=1e-12)
        assert low(video)[b].item() == pytest.approx(min(row), abs=1e-12)
    assert mean(video).dtype == torch.float64 and mean(video.float()).dtype == torch.float32


@pytest.mark.parametrize("segment_frame,offset", [("first", 0), ("middle", 0)])
def test_segmental_fixed_frames_match_instructvideo_rule(segment_frame, offset):
    # F = 8, S = 4: segments of 2 frames; "first" and "middle" ((2 - 1) // 2 = 0) both take frames 0, 2, 4, 6
    reward = V.PerFrameReward(mean_pixel, reduce="segmental", segments=4, attenuation=0.5, segment_frame=segment_frame)
    out = reward(level_video(VALUES))
    for b, row in enumerate(VALUES):
        frames = [2 * s + offset for s in range(4)]
        hand = sum(math.exp(-0.5 * abs(i - 4)) * row[i] for i in frames) / 4
        assert out[b].item() == pytest.approx(hand, abs=1e-12)
    assert reward.last_index.tolist() == [[0, 2, 4, 6]] * 2


def test_segmental_middle_frame_of_longer_segments_and_unscored_tail():
    # F = 11, S = 3: span 3, middle offset 1 -> frames 1, 4, 7; frames 9 and 10 are past S * span and never scored
    values = [[0.05 * (t + 1) for t in range(11)]]
    reward = V.PerFrameReward(mean_pixel, reduce="segmental", segments=3, attenuation=1.0, segment_frame="middle")
    out = reward(level_video(values))
    hand = sum(math.exp(-abs(i - 5)) * values[0][i] for i in (1, 4, 7)) / 3
    assert out.item() == pytest.approx(hand, abs=1e-12)


def test_segmental_random_draws_one_frame_inside_each_segment_and_weights_it():
    values = [[0.05 * (t + 1) for t in range(10)]] * 3
    reward = V.PerFrameReward(mean_pixel, reduce="segmental", segments=4, attenuation=0.3,
                              generator=torch.Generator().manual_seed(0))
    seen = set()
    for _ in range(40):
        out = reward(level_video(values))
        idx = reward.last_index
        assert idx.shape == (3, 4)
        span = 10 // 4
        assert ((idx // span) == torch.arange(4)).all()  # frame s lies in segment s; 8 and 9 never drawn
        seen.update(idx.flatten().tolist())
        for b in range(3):
            hand = sum(math.exp(-0.3 * abs(i - 5)) * values[b][i] for i in idx[b].tolist()) / 4
            assert out[b].item() == pytest.approx(hand, abs=1e-12)
    assert seen == set(range(8))


def test_attenuation_zero_is_the_plain_mean_of_the_sampled_frames():
    reward = V.PerFrameReward(mean_pixel, reduce="segmental", segments=8, attenuation=0.0, segment_frame="first")
    assert reward(level_video(VALUES)).tolist() == pytest.approx([sum(r) / 8 for r in VALUES], abs=1e-12)


def test_subsampled_frames_alone_receive_gradients():
    video = torch.rand(3, 8, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    reward = V.PerFrameReward(mean_pixel, reduce="mean", frames=3, generator=torch.Generator().manual_seed(1))
    out = reward(video)
    out.sum().backward()
    idx = reward.last_index
    assert idx.shape == (3, 3) and (idx[:, 1:] > idx[:, :-1]).all()  # distinct, in time order
    touched = video.grad.abs().sum(dim=(2, 3, 4)) > 0
    expected = torch.zeros(3, 8, dtype=torch.bool)
    expected[torch.arange(3)[:, None], idx] = True
    assert torch.equal(touched, expected)
    for b in range(3):  # and the value is the mean over exactly those frames
        assert out[b].item() == pytest.approx(video[b, idx[b]].mean().item(), abs=1e-6)


def test_min_and_segmental_gradients_reach_only_the_frames_they_use():
    video = level_video(VALUES).requires_grad_(True)
    V.PerFrameReward(mean_pixel, reduce="min")(video).sum().backward()
    touched = (video.grad.abs().sum(dim=(2, 3, 4)) > 0).tolist()
    assert touched == [[t == int(np.argmin(r)) for t in range(8)] for r in VALUES]
    video.grad = None
    V.PerFrameReward(mean_pixel, reduce="segmental", segments=2, segment_frame="first")(video).sum().backward()
    touched = (video.grad.abs().sum(dim=(2, 3, 4)) > 0).tolist()
    assert touched == [[t in (0, 4) for t in range(8)]] * 2


def test_config_level_per_frame_reward_and_bad_options():
    video = level_video(VALUES).float()
    prompts = ["a", "b"]
    fn = bind_reward_kwargs(resolve_reward("per_frame"), "per_frame",
                            {"reward": "differentiable_brightness", "reduce": "segmental", "segments": 4,
                             "segment_frame": "first", "attenuation": 1.0})
    out = call_reward(fn, video, prompts, "cpu")
    hand = [sum(math.exp(-abs(i - 4)) * r[i] for i in (0, 2, 4, 6)) / 4 for r in VALUES]
    assert out.tolist() == pytest.approx(hand, abs=1e-6)
    built = load_reward("per_frame", reward="differentiable_brightness", reduce="min")
    assert built.differentiable and built(video, prompts).tolist() == pytest.approx([min(r) for r in VALUES], abs=1e-6)
    assert not load_reward("per_frame", reward="brightness").differentiable  # colour rewards detach
    # a seeded config draws the same frames every time it is built
    a = load_reward("per_frame", reward="brightness", reduce="segmental", seed=3)
    b = load_reward("per_frame", reward="brightness", reduce="segmental", seed=3)
    assert torch.equal(a(video, prompts), b(video, prompts)) and torch.equal(a.last_index, b.last_index)
    with pytest.raises(ValueError, match="reduce 'median'"):
        load_reward("per_frame", reward="brightness", reduce="median")
    with pytest.raises(ValueError, match=r"frames \(VADER subsampling\) and reduce .segmental."):
        load_reward("per_frame", reward="brightness", reduce="segmental", frames=2)
    with pytest.raises(ValueError, match=r"frames = 9 must be in \[1, 8\]"):
        load_reward("per_frame", reward="brightness", frames=9)(video, prompts)
    with pytest.raises(ValueError, match=r"segments = 9"):
        load_reward("per_frame", reward="brightness", reduce="segmental", segments=9)(video, prompts)
    with pytest.raises(ValueError, match=r"\(B, F, C, H, W\)"):
        load_reward("per_frame", reward="brightness")(video[:, 0], prompts)
    with pytest.raises(ValueError, match="do not fit"):
        bind_reward_kwargs(resolve_reward("per_frame"), "per_frame", {"reduction": "mean"})


def test_video_rewards_mix_in_a_weighted_sum():
    video = level_video(VALUES).float()
    mixed = load_reward("weighted_sum", components=[
        {"name": "per_frame", "kwargs": {"reward": "differentiable_brightness", "reduce": "min"}},
        {"name": "frame_difference", "weight": 0.5}])
    hand = [min(r) + 0.5 * (1 - np.mean(np.abs(np.diff(r)))) for r in VALUES]
    assert mixed(video, ["a", "b"]).tolist() == pytest.approx(hand, abs=1e-6)
    assert mixed.differentiable


def test_per_frame_wraps_a_model_reward_by_directory(tmp_path):
    path = tiny_clip_score(str(tmp_path / "clip"), clip_negative=False)
    image = load_reward(path)
    video = torch.rand(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle", "a blue square"]
    wrapped = load_reward("per_frame", reward=path, reduce="mean")
    assert wrapped.differentiable
    frames = torch.stack([image(video[:, t], prompts) for t in range(3)], dim=1)
    assert torch.allclose(wrapped(video, prompts), frames.mean(1), atol=1e-5)


# ---------------------------------------------------------------- temporal consistency

def moving_clip():
    return C.render_clip("a red square moving right", rng=np.random.default_rng(0)).frames


SHUFFLE = [0, 4, 1, 5, 2, 6, 3, 7]  # every consecutive pair 3-4 frames apart in the original


def test_frame_difference_hand_computation_constant_and_shuffled():
    v = torch.rand(2, 4, 3, 5, 5, dtype=torch.float64)
    hand = [1 - np.mean([np.abs(v[b, t + 1].numpy() - v[b, t].numpy()).mean() for t in range(3)]) for b in range(2)]
    assert T.frame_difference(v, ["", ""]).tolist() == pytest.approx(hand, abs=1e-12)
    clip = moving_clip()
    constant = clip[:1].expand(8, -1, -1, -1)
    scores = T.frame_difference(torch.stack([constant, clip, clip[SHUFFLE]]), [""] * 3)
    assert scores[0] == 1.0 and scores[0] > scores[1] > scores[2]
    assert T.frame_difference(clip[None, :1], [""]).item() == 1.0  # no consecutive pair


def test_clip_temporal_consistency_matches_reference_and_round_trips(tmp_path):
    reward = T.CLIPTemporalConsistency(tiny_clip_model()).freeze().double()
    clip = moving_clip().double()
    videos = torch.stack([clip[:1].expand(8, -1, -1, -1), clip, clip[SHUFFLE]])
    out = reward(videos)
    assert out.shape == (3,) and out[0].item() == pytest.approx(1.0, abs=1e-6)
    # reference: cosines of consecutive embeddings of the normalised frames (frames already at the model's size)
    with torch.no_grad():
        emb = reward.model.get_image_features(pixel_values=normalize(clip, CLIP_MEAN, CLIP_STD)).pooler_output
    cos = torch.nn.functional.cosine_similarity(emb[1:], emb[:-1], dim=-1).mean()
    assert out[1].item() == pytest.approx(cos.item(), abs=1e-6)
    # a random tiny CLIP does not tell an ordered clip from its shuffle (its embeddings barely move), but any change
    # between frames costs: the moving and shuffled clips score below the constant one (frame_difference ranks all 3)
    assert out[1] < 1.0 - 1e-6 and out[2] < 1.0 - 1e-6
    second = reward(torch.stack([clip[SHUFFLE]]))
    assert second.item() == pytest.approx(out[2].item(), abs=1e-9)  # batch-independent
    x = videos.float().requires_grad_(True)
    path = str(tmp_path / "tc")
    reward.float().save_pretrained(path)
    again = load_reward(path)
    assert again.reward_type == "temporal_consistency"
    assert torch.allclose(again(x, None), out.float(), atol=1e-4)
    again(x, None).sum().backward()
    assert x.grad[1:].abs().sum() > 0
    loaded = load_reward("temporal_consistency", model=path)  # the registered name with a local path
    assert torch.allclose(loaded(x.detach()), out.float(), atol=1e-4)
    with pytest.raises(MissingRewardWeights, match="no/such/clip"):
        load_reward("temporal_consistency", model=str(tmp_path / "no/such/clip"))


# ---------------------------------------------------------------- X-CLIP

def tiny_xclip(num_frames=4, seed=0):
    from transformers import XCLIPConfig, XCLIPModel
    torch.manual_seed(seed)
    cfg = XCLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4),
                      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=32, patch_size=8, num_frames=num_frames,
                                         mit_hidden_size=16, mit_intermediate_size=32, mit_num_hidden_layers=1,
                                         mit_num_attention_heads=4),
                      projection_dim=16, prompt_layers=1, prompt_num_attention_heads=4)
    return XCLIPModel(cfg).eval()


@pytest.fixture(scope="module")
def xclip_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("xclip"))
    X.XCLIPScore(tiny_xclip(), clip_tokenizer()).save_pretrained(path)
    return path


def test_xclip_score_shape_formula_gradient_and_frame_sampling(xclip_dir):
    reward = load_reward(xclip_dir)
    assert reward.reward_type == "xclip_score" and reward.differentiable and reward.num_frames == 4
    video = torch.rand(3, 8, 3, 32, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    prompts = ["a red circle moving right", "a blue square", "a red circle moving right"]
    out = reward(video, prompts)
    assert out.shape == (3,) and out.dtype == torch.float32 and torch.isfinite(out).all()
    # reference: the model's own video-text logits over the 4 evenly spaced frames 0, 2, 5, 7, over its temperature
    frames = video.detach()[:, [0, 2, 5, 7]]
    pixels = torch.nn.functional.interpolate(frames.reshape(-1, 3, 32, 32), size=32)  # already at the model size
    pixels = normalize(pixels, X.IMAGENET_MEAN, X.IMAGENET_STD).reshape(3, 4, 3, 32, 32)
    tok = reward.tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = reward.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                              pixel_values=pixels).logits_per_video
    ref = 100.0 * logits.diagonal() / reward.model.logit_scale.exp()
    assert torch.allclose(out.detach(), ref, atol=1e-4)
    out.sum().backward()
    touched = (video.grad.abs().sum(dim=(2, 3, 4)) > 0)[0].tolist()
    assert touched == [t in (0, 2, 5, 7) for t in range(8)]
    # the same caption on the same video scores the same whichever batch it sits in
    assert out[0].item() == pytest.approx(reward(video[:1].detach(), prompts[:1]).item(), abs=1e-4)
    assert X.uniform_frame_index(2, 4).tolist() == [0, 0, 1, 1]


def test_xclip_gradient_ascent_ranks_the_moved_video_above_the_start(xclip_dir):
    # random weights know no captions, so the known pair is made: a few ascent steps on the pixels along the reward's
    # gradient must give a video the reward ranks above the start (a wrong or detached gradient would not)
    reward = load_reward(xclip_dir)
    start = torch.rand(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    prompts = ["a red circle moving right", "two blue squares"]
    video = start.clone().requires_grad_(True)
    for _ in range(3):
        grad, = torch.autograd.grad(reward(video, prompts).sum(), video)
        video = (video + 0.05 * grad.sign()).clamp(0, 1).detach().requires_grad_(True)
    with torch.no_grad():
        assert (reward(video, prompts) > reward(start, prompts)).all()


def test_xclip_score_through_the_registry_and_missing_weights(xclip_dir, tmp_path):
    video = torch.rand(2, 4, 3, 40, 48, generator=torch.Generator().manual_seed(1))
    by_dir = call_reward(resolve_reward(xclip_dir), video, ["a", "b"], "cpu")
    by_name = load_reward("xclip_score", model=xclip_dir, scale=1.0)
    assert torch.allclose(by_name(video, ["a", "b"]) * 100.0, by_dir, atol=1e-4)
    with pytest.raises(MissingRewardWeights, match="xclip_score"):
        load_reward("xclip_score", model=str(tmp_path / "missing" / "xclip"))


def test_new_rewards_are_registered():
    for name in ("per_frame", "temporal_consistency", "xclip_score", "frame_difference", "shapes_video"):
        assert name in registry.rewards
    assert registry.rewards["frame_difference"] is T.frame_difference
    assert registry.rewards["shapes_video"] is VC.shapes_video_reward


# ---------------------------------------------------------------- shapes_video

def clip_of(caption, seed=0):
    return C.render_clip(caption, rng=np.random.default_rng(seed))


def failed(result):
    return {a for a, ok in result.attributes.items() if not ok}


def test_ground_truth_clips_score_one_on_every_caption():
    caps = list(C.clip_captions())
    videos = torch.stack([clip_of(c, i).frames for i, c in enumerate(caps)])
    results = VC.score_clips(videos, caps)
    acc = VC.video_accuracies(results)
    assert acc["accuracy"] == 1.0 and all(acc[a] == 1.0 for a in VC.VIDEO_ATTRIBUTES)
    assert min(r.reward for r in results) >= 0.95
    assert set(acc) >= {"accuracy/moving", "accuracy/still", "reward", "n"}
    rewards = call_reward(resolve_reward("shapes_video"), videos[:4], caps[:4], "cpu")
    assert rewards.tolist() == pytest.approx([r.reward for r in results[:4]])


@pytest.mark.parametrize("shown,asked,wrong", [
    ("a red circle moving left", "a red circle moving right", {"direction"}),
    ("two green triangles moving down", "two green triangles moving up", {"direction"}),
    ("a red circle", "a red circle moving right", {"direction"}),             # still when it should move
    ("a blue square moving up", "a blue square", {"direction"}),              # moving when it should be still
    ("a red square moving right", "a red circle moving right", {"shape", "count"}),
    ("three yellow circles", "two yellow circles", {"count"}),
    # a wrong colour fails colour (and shape / count, stated for the colour), but its motion is still judged
    ("a blue circle moving right", "a red circle moving right", {"color", "shape", "count"}),
])
def test_wrong_clips_fail_exactly_their_attribute(shown, asked, wrong):
    videos = torch.stack([clip_of(shown, s).frames for s in range(6)])
    results = VC.score_clips(videos, [asked] * 6)
    for r in results:
        assert failed(r) == wrong and r.reward < 1.0
        for attr in VC.VIDEO_ATTRIBUTES:
            assert (r.values[attr] < 1.0) == (attr in wrong)


def test_shapes_video_thresholds_from_a_config():
    clip = clip_of("a red circle moving right")
    flicker = clip.frames.clone()
    flicker[[2, 5]] = 0.0
    default = call_reward(resolve_reward("shapes_video"), flicker[None], [clip.caption], "cpu")
    # the clip travels 10.5-14 px: asking for 20 turns the direction value from 1 to 0, a fifth of the reward
    far = bind_reward_kwargs(resolve_reward("shapes_video"), "shapes_video", {"min_travel": 20.0})
    assert call_reward(far, flicker[None], [clip.caption], "cpu").item() == pytest.approx(default.item() - 0.2)
    with pytest.raises(ValueError, match="do not fit"):
        bind_reward_kwargs(resolve_reward("shapes_video"), "shapes_video", {"min_travl": 3.0})
    with pytest.raises(ValueError, match="min_fraction"):
        call_reward(bind_reward_kwargs(resolve_reward("shapes_video"), "shapes_video", {"min_fraction": 1.5}),
                    flicker[None], [clip.caption], "cpu")


def test_jerky_and_flickering_tracks_fail_smoothness():
    clip = clip_of("a green circle moving right")
    jerky = clip.tracks.copy()
    jerky[3:, :, 0] += 4.0  # a 4 px jump in the middle of a 2 px/frame track
    r = VC.score_clips(C.draw_clip(clip.scene, jerky, clip.radii)[None], [clip.caption])[0]
    assert failed(r) == {"smoothness"} and 0 < r.values["smoothness"] < 1
    flicker = clip.frames.clone()
    flicker[[2, 5]] = 0.0  # the object vanishes in two frames: 6 of 8 frames still show it
    r = VC.score_clips(flicker[None], [clip.caption])[0]
    assert r.values["color"] == pytest.approx(6 / 8) and r.attributes["color"]  # min_fraction 0.75
    assert not r.attributes["smoothness"]
    blank = torch.zeros(1, 8, 3, 32, 32)
    r = VC.score_clips(blank, [clip.caption])[0]
    assert r.reward == 0.0 and failed(r) == set(VC.VIDEO_ATTRIBUTES)


def test_link_tracks_and_track_checks():
    points = [[(2.0, 5.0), (20.0, 5.0)], [(22.0, 5.0), (4.0, 5.0)], [], [(8.0, 5.0), (26.0, 5.0)]]
    tracks = VC.link_tracks(points, max_jump=8.0)
    assert tracks == [[(2.0, 5.0), (4.0, 5.0), None, (8.0, 5.0)], [(20.0, 5.0), (22.0, 5.0), None, (26.0, 5.0)]]
    cfg = VC.MotionConfig()
    assert VC.track_direction_ok(tracks[0], "right", cfg) and not VC.track_direction_ok(tracks[0], "left", cfg)
    assert not VC.track_direction_ok(tracks[0], None, cfg)
    assert VC.track_smoothness(tracks[0], cfg) == 0.0  # both triples touch the lost frame
    assert VC.track_smoothness([(0.0, 0.0), (2.0, 0.0), (4.0, 0.0), (7.0, 0.0)], cfg) == 1.0
    assert VC.track_smoothness([(0.0, 0.0), (2.0, 0.0), (4.0, 0.0), (8.0, 0.0)], cfg) == 0.5
    assert VC.link_tracks([[], []], 8.0) == []
    with pytest.raises(ValueError, match="MotionConfig.min_fraction"):
        VC.MotionConfig(min_fraction=2.0)


def test_report_and_bad_inputs():
    clip = clip_of("two blue squares moving up")
    report = VC.shapes_video_report(clip.frames[None], [clip.caption])
    assert report["accuracies"]["accuracy"] == 1.0
    res = report["results"][0]
    assert res["kind"] == "moving" and len(res["tracks"]) == 2 and len(res["detections"]) == 8
    with pytest.raises(ValueError, match="2 videos but 1 prompts"):
        VC.score_clips(torch.zeros(2, 8, 3, 32, 32), ["a red circle"])
    with pytest.raises(ValueError, match="bad word 'purple'"):
        VC.score_clips(torch.zeros(1, 8, 3, 32, 32), ["a purple circle"])
