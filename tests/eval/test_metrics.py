"""FID / KID / IS / diversity against float64 closed forms, and the Inception loader's no-download contract."""
import math
from unittest import mock

import numpy as np
import pytest
import scipy.linalg
import torch

from diffalign.eval import metrics


def _fid_reference(a, b):
    a, b = a.numpy(), b.numpy()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def _mmd_reference(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3 (KID, Binkowski et al. 2018)."""
    x, y = x.numpy(), y.numpy()
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3
    m = x.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def test_fid_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(40, 5, generator=g, dtype=torch.float64)
    fake = torch.randn(30, 5, generator=g, dtype=torch.float64) * 1.5 + 0.7
    assert metrics.frechet_distance(real, fake) == pytest.approx(_fid_reference(real, fake), rel=1e-6)
    assert metrics.frechet_distance(real, real) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.frechet_distance(real[:1], fake)


def test_kid_matches_unbiased_mmd_when_the_subset_is_the_whole_set():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(12, 4, generator=g, dtype=torch.float64)
    fake = torch.randn(12, 4, generator=g, dtype=torch.float64) + 0.5
    out = metrics.kernel_inception_distance(real, fake, subsets=3, subset_size=1000)
    assert out["subset_size"] == 12  # capped at the set size: every subset is the whole set
    assert out["mean"] == pytest.approx(_mmd_reference(real, fake), rel=1e-6)
    assert out["std"] == pytest.approx(0.0, abs=1e-9)
    small = metrics.kernel_inception_distance(real, fake, subsets=5, subset_size=6, seed=3)
    assert small == metrics.kernel_inception_distance(real, fake, subsets=5, subset_size=6, seed=3)  # seeded


def test_inception_score_matches_closed_form():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(20, 7, generator=g, dtype=torch.float64) * 3
    p = logits.softmax(1).numpy()
    py = p.mean(0)
    expected = math.exp(float((p * (np.log(p) - np.log(py))).sum(1).mean()))
    out = metrics.inception_score(logits, splits=1)
    assert out["mean"] == pytest.approx(expected, rel=1e-6)
    assert out["std"] == 0.0
    # one class for every sample: IS is exactly 1
    assert metrics.inception_score(torch.tensor([[9.0, 0.0]] * 4), splits=2)["mean"] == pytest.approx(1.0, abs=1e-3)


def test_pairwise_diversity():
    zeros, ones = torch.zeros(3, 2, 2), torch.ones(3, 2, 2)
    half = torch.full((3, 2, 2), 0.5)
    x = torch.stack([zeros, ones, half, zeros, zeros, ones])
    out = metrics.pairwise_diversity(x, ["a", "a", "a", "b", "b", "c"])
    # prompt a: pairs (0,1) 1.0, (0,2) 0.5, (1,2) 0.5 -> 2/3; prompt b: two identical images -> 0; c: alone, skipped
    assert out["per_prompt"] == pytest.approx({"a": 2 / 3, "b": 0.0})
    assert out["mean"] == pytest.approx(1 / 3)
    assert metrics.pairwise_diversity(x, list("abcdef"))["mean"] is None
    v = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    assert metrics.pairwise_diversity(v, ["p"] * 3, "cosine")["mean"] == pytest.approx((1 + 2 + 1) / 3)
    with pytest.raises(ValueError, match="group labels"):
        metrics.pairwise_diversity(v, ["p"])


def test_user_network_loading_and_feature_extraction():
    net = metrics.load_user_network("torch.nn:Flatten")  # a module class, built with no arguments
    images = torch.rand(5, 3, 4, 4)
    feats = metrics.extract_features(net, images, batch_size=2, progress=False)
    assert feats.dtype == torch.float64 and torch.equal(feats, images.reshape(5, -1).double())
    for bad, msg in [("torch.nn", "package.module:callable"), ("nope_module:x", "cannot import"),
                     ("math:pi", "neither")]:
        with pytest.raises(ValueError, match=msg):
            metrics.load_user_network(bad)


def _random_inception_weights(path):
    """A randomly initialised Inception state dict, built without touching the network."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi
    from torchmetrics.image.fid import NoTrainInceptionV3
    with mock.patch.object(tfi, "load_state_dict_from_url", side_effect=AssertionError("tried to download")), \
            mock.patch("torch.load", return_value={}), \
            mock.patch.object(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None):
        net = NoTrainInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"], "unused")
    torch.save(net.state_dict(), path)


def test_inception_from_a_local_file_and_a_clear_error_when_absent(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth.*weights-inception-2015-12-05"):
        metrics.load_inception(str(missing))
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be loaded"):
        metrics.load_inception(str(tmp_path / "broken.pth"))
    path = tmp_path / "inception.pth"
    _random_inception_weights(path)
    import torch_fidelity.feature_extractor_inceptionv3 as tfi
    with mock.patch.object(tfi, "load_state_dict_from_url", side_effect=AssertionError("tried to download")):
        features, classifier = metrics.load_inception(str(path))
    images = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        f, c = features(images), classifier(images)
    assert f.shape == (3, metrics.INCEPTION_FEATURES) and c.shape == (3, metrics.INCEPTION_CLASSES)
    assert torch.equal(features(images[:1]), f[:1])  # deterministic, per image
