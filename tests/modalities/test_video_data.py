"""Clip files <-> frames, the video adapter's ``encode`` (offline data) and the ``video_jsonl`` preference reader."""
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from diffalign.data import PreferenceDataError  # noqa: E402
from diffalign.modalities.video import (VideoAdapter, VideoOptions, fit_clip, load_video_preferences,  # noqa: E402
                                        read_video, write_video)


def moving_square(frames=8, side=32, seed=0):
    """A clip (F, 3, side, side) in [0, 1]: a coloured square moving right on a grey ground, smooth enough that
    H.264 at this size keeps it within a few levels."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.rand(3, 1, 1, generator=g)
    clip = torch.full((frames, 3, side, side), 0.5)
    for f in range(frames):
        clip[f, :, 8:20, 2 + 2 * f:14 + 2 * f] = colour
    return clip


@pytest.mark.parametrize("ext,tol", [(".gif", 0.02), (".mp4", 0.08)])
def test_written_clips_read_back(tmp_path, ext, tol):
    clip = moving_square()
    path = str(tmp_path / f"clip{ext}")
    write_video(path, clip)
    back = read_video(path)
    assert back.shape == clip.shape and back.dtype == torch.float32
    # gif: 8-bit palette (exact for these few colours up to rounding); mp4: lossy yuv420p, so a mean error bound
    assert (back - clip).abs().mean().item() < tol


def test_frame_folders_tensors_and_bad_inputs(tmp_path):
    from PIL import Image
    clip = moving_square(frames=3)
    folder = tmp_path / "frames"
    folder.mkdir()
    for f in range(3):  # names sort in frame order
        Image.fromarray((clip[f].permute(1, 2, 0) * 255).round().byte().numpy()).save(folder / f"{f:03d}.png")
    torch.testing.assert_close(read_video(str(folder)), clip, atol=1 / 255, rtol=0)
    torch.testing.assert_close(read_video((clip * 255).round().byte()), clip, atol=1 / 255, rtol=0)
    with pytest.raises(ValueError, match="does not exist"):
        read_video(str(tmp_path / "missing.mp4"))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(ValueError, match="broken.mp4.*does not decode"):
        read_video(str(broken))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        read_video(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"\(F, 3, H, W\)"):
        read_video(torch.zeros(3, 32, 32))


def test_fit_clip_spaces_frames_evenly_and_crops_the_centre():
    clip = torch.arange(9.0).view(9, 1, 1, 1).expand(9, 3, 6, 8) / 8  # frame f holds f / 8; 6 x 8 pixels
    clip = clip.clone()
    clip[:, :, :, :1] = 1.0  # the cropped-away left column
    out = fit_clip(clip, 5, 6)
    assert out.shape == (5, 3, 6, 6)
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([0, 2, 4, 6, 8]) / 8)  # linspace(0, 8, 5)
    assert fit_clip(clip, 3, 3).shape == (3, 3, 3, 3)
    with pytest.raises(ValueError, match="shorter than modality.options.num_frames = 10"):
        fit_clip(clip, 10, 6)


@pytest.mark.parametrize("arch,frames", [("animatediff", 4), ("wan", 5)])
def test_encode_gives_latents_that_decode_back_to_shape(tmp_path, arch, frames):
    adapter = VideoAdapter.from_options(VideoOptions(architecture=arch, num_frames=frames))
    path = str(tmp_path / "clip.gif")
    write_video(path, moving_square(frames=9))
    x0, cond = adapter.encode([adapter.load_sample(path), moving_square(frames=frames, seed=1)], ["a", {"text": "b"}])
    assert x0.shape == (2,) + adapter.latent_shape
    torch.testing.assert_close(cond["prompt_embeds"], adapter.encode_conditions(["a", "b"])["prompt_embeds"])
    assert adapter.decode(x0, cond).shape == (2, frames, 3, 32, 32)


def test_load_sample_fits_the_clip_and_names_it_when_it_cannot(tmp_path):
    adapter = VideoAdapter.from_options(VideoOptions(num_frames=4))
    path = str(tmp_path / "short.gif")
    write_video(path, moving_square(frames=3))
    with pytest.raises(ValueError, match="short.gif.*3 frames is shorter than modality.options.num_frames = 4"):
        adapter.load_sample(path)
    write_video(path, moving_square(frames=7, side=40))
    assert adapter.load_sample(path).shape == (4, 3, 32, 32)


def test_demo_encode_is_the_inverse_of_decode(tmp_path):
    adapter = VideoAdapter.from_options(VideoOptions(model="demo", lora_rank=0))
    clip = moving_square(frames=8)
    for name in ("clip.gif", "clip.mp4"):
        write_video(str(tmp_path / name), clip)
    x0, cond = adapter.encode([adapter.load_sample(str(tmp_path / "clip.gif")), clip], ["a red square"] * 2)
    torch.testing.assert_close(x0[1], clip.permute(1, 0, 2, 3) * 2 - 1)  # pixel space: x = 2 frames - 1
    torch.testing.assert_close(adapter.decode(x0, cond)[1], clip)
    assert (adapter.decode(x0, cond)[0] - clip).abs().max() < 0.02  # gif palette rounding
    x_mp4, _ = adapter.encode([adapter.load_sample(str(tmp_path / "clip.mp4"))], ["a red square"])
    assert (adapter.decode(x_mp4, {})[0] - clip).abs().mean() < 0.08


# ---- the video_jsonl reader --------------------------------------------------------------------------------
def write_pairs(tmp_path, rows):
    for i in range(2):
        write_video(str(tmp_path / f"v{i}.gif"), moving_square(frames=4, seed=i))
    (tmp_path / "broken.mp4").write_bytes(b"nope")
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_reader_keeps_good_pairs_and_counts_bad_rows_by_reason(tmp_path):
    path = write_pairs(tmp_path, [
        {"prompt": "a cat", "video_0": "v0.gif", "video_1": "v1.gif", "label": 0},
        {"prompt": "a dog", "video_0": "v0.gif", "video_1": "v1.gif", "label": 1},
        {"prompt": "a tie", "video_0": "v0.gif", "video_1": "v1.gif", "label": 0.5},
        {"video_0": "v0.gif", "video_1": "v1.gif", "label": 0},
        {"prompt": "bad label", "video_0": "v0.gif", "video_1": "v1.gif", "label": 2},
        {"prompt": "one clip", "video_0": "v0.gif", "label": 0},
        {"prompt": "broken", "video_0": "broken.mp4", "video_1": "v1.gif", "label": 0},
        {"prompt": "missing", "video_0": "v0.gif", "video_1": "nowhere.mp4", "label": 1},
        "{not json",
    ])
    with pytest.warns(UserWarning, match="preference data"):
        ds = load_video_preferences(path)
    r = ds.report
    assert (r.rows, r.kept, r.ties, r.missing_caption, r.malformed, r.undecodable) == (9, 2, 1, 1, 3, 2)
    assert any("prefs.jsonl line 9" in e for e in r.examples["malformed"])
    assert any("prefs.jsonl line 7" in e and "broken.mp4" in e for e in r.examples["undecodable"])
    cat, dog = ds.pairs
    assert cat.chosen.endswith("v0.gif") and cat.rejected.endswith("v1.gif")  # label: the preferred clip's index
    assert dog.chosen.endswith("v1.gif") and dog.rejected.endswith("v0.gif")
    assert os.path.isabs(cat.chosen)  # relative to the file's folder


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(PreferenceDataError, match="nowhere.jsonl.*does not exist"):
        load_video_preferences(str(tmp_path / "nowhere.jsonl"))
    path = write_pairs(tmp_path, [{"prompt": "a tie", "video_0": "v0.gif", "video_1": "v1.gif", "label": 0.5}])
    with pytest.raises(PreferenceDataError, match="no usable preference data in .*prefs.jsonl.*1 ties"):
        load_video_preferences(path)


def test_saved_samples_read_back_and_ai_feedback_trains_through_the_reader(tmp_path):
    """``save_sample`` writes a frame folder (lossless to 8 bits) + a GIF; ``label_samples`` with it writes the
    AI-feedback rows, which the video reader takes (rewards kept) while counting malformed ones."""
    from diffalign.inference.feedback import label_samples
    adapter = VideoAdapter.from_options(VideoOptions(num_frames=4, resolution=32))
    clips = torch.stack([moving_square(frames=4, seed=s) for s in range(3)])
    clips[2] *= 0.5  # the darkest: rejected by brightness
    name = adapter.save_sample(clips[0], str(tmp_path / "one"), "c")
    assert name == "c" and sorted(os.listdir(tmp_path / "one")) == ["c", "c.gif"]
    assert sorted(os.listdir(tmp_path / "one" / "c")) == [f"{i:04d}.png" for i in range(4)]
    back = adapter.load_sample(str(tmp_path / "one" / "c"))
    assert (back - clips[0]).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit rounding only
    assert read_video(str(tmp_path / "one" / "c.gif")).shape == (4, 3, 32, 32)
    with pytest.raises(ValueError, match=r"a clip is \(frames, 3, H, W\), got shape \(3, 32, 32\)"):
        adapter.save_sample(clips[0, 0], str(tmp_path), "bad")

    def brightness(videos, prompts):
        return videos.mean(dim=(1, 2, 3, 4))
    report = label_samples(str(tmp_path / "fb"), clips, ["a cat"] * 3, brightness, save=adapter.save_sample)
    with open(report.path) as f:
        rows = [json.loads(line) for line in f]
    rows.append({"prompt": "a cat", "chosen": rows[0]["chosen"], "rejected": rows[0]["rejected"],
                 "chosen_reward": "high", "rejected_reward": 0.1})
    with open(report.path, "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.warns(UserWarning, match="1 malformed"):
        ds = load_video_preferences(report.path)
    assert ds.report.kept == 3 and ds.report.malformed == 1 and ds.has_rewards
    worst = [p for p in ds.pairs if p.rejected.endswith("000002")]
    assert len(worst) == 2 and all(p.chosen_reward > p.rejected_reward for p in worst)
    x0, _ = adapter.encode([adapter.load_sample(ds.pairs[0].chosen)], ["a cat"])
    assert x0.shape[0] == 1
