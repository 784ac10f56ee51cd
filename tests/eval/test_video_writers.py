"""GIF and filmstrip writers: the pixels that come back are the clip's, enlarged by whole multiples."""
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from diffalign.data import shapes_clips as C
from diffalign.eval import video_writers as W


def clip(caption="two blue squares moving up", seed=0):
    return C.render_clip(caption, rng=np.random.default_rng(seed)).frames


def enlarged(frames, scale):
    x = (frames * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.kron(x, np.ones((1, scale, scale, 1), np.uint8))


def test_gif_round_trips_every_frame_exactly(tmp_path):
    frames = clip()
    path = W.save_gif(str(tmp_path / "sub" / "clip.gif"), frames, fps=5, scale=2)
    back = iio.imread(path, index=None)[..., :3]
    assert back.shape == (8, 64, 64, 3) and np.array_equal(back, enlarged(frames, 2))
    meta = iio.immeta(path, index=None)
    assert meta["duration"] == 200 and meta["loop"] == 0
    with pytest.raises(ValueError, match="fps must be > 0"):
        W.save_gif(str(tmp_path / "x.gif"), frames, fps=0)
    with pytest.raises(ValueError, match=r"\(F, 3, H, W\)"):
        W.save_gif(str(tmp_path / "x.gif"), frames[None])


def test_filmstrip_places_each_frame_under_its_label(tmp_path):
    a, b = clip(), clip("a red circle moving right", 1)
    strip = W.filmstrip([a, b], ["first", "second"], scale=3)
    fh = fw = 32 * 3
    row_h = W.LABEL_HEIGHT + fh + W.PAD
    assert strip.shape == (W.PAD + 2 * row_h, W.PAD + 8 * (fw + W.PAD), 3)
    for r, video in enumerate((a, b)):
        big = enlarged(video, 3)
        top = W.PAD + r * row_h + W.LABEL_HEIGHT
        for t in range(8):
            left = W.PAD + t * (fw + W.PAD)
            assert np.array_equal(strip[top:top + fh, left:left + fw], big[t])
    label_band = strip[W.PAD:W.PAD + W.LABEL_HEIGHT, W.PAD:W.PAD + 60]
    assert (label_band < 128).any()  # the label's text is drawn (black on white)
    path = W.save_filmstrip(str(tmp_path / "strip.png"), [a, b], [b, a], ["x", "y"])
    assert iio.imread(path).shape == (W.PAD + 4 * row_h, strip.shape[1], 3)


def test_filmstrip_errors_name_the_mismatch():
    with pytest.raises(ValueError, match="2 clips but 1 labels"):
        W.filmstrip([clip(), clip()], ["one"])
    with pytest.raises(ValueError, match="different frame sizes"):
        W.filmstrip([clip(), torch.zeros(8, 3, 16, 16)])
    with pytest.raises(ValueError, match="1 before clips, 2 after clips"):
        W.save_filmstrip("/tmp/never.png", [clip()], [clip(), clip()], ["a"])
