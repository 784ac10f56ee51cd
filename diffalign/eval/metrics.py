"""Sample-quality metrics: FID, KID, Inception Score (torchmetrics) and a within-prompt diversity.

Feature networks never download anything. The Inception network is torch-fidelity's port of the
2015 TF-Slim Inception v3 that FID was defined with; its weights are read from a local file
(``load_inception(path)``), because torchmetrics / torch-fidelity would otherwise fetch them from
GitHub at construction. A user network (``load_user_network("package.module:callable")``) may
replace it for FID/KID (features) or IS (class logits).

Every feature network here takes float images (B, 3, H, W) in [0, 1]. Features are extracted once
(``extract_features``) and handed to torchmetrics through an identity "feature network", so one
Inception pass serves FID, KID and IS alike.
"""
from __future__ import annotations

import importlib
import os
import warnings
from typing import Dict, List, Optional, Sequence

import torch

INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_FEATURES = 2048   # pool3 features (FID / KID)
INCEPTION_CLASSES = 1008    # the 2015 network's logits (IS; 1000 ImageNet classes + 8 unused)


class InceptionFeatures(torch.nn.Module):
    """Inception v3 (FID's network) from a local weights file: images in [0, 1] -> (pool3 (B, 2048), logits (B, 1008)).

    Images are quantised to uint8 first, as the reference implementations feed the network 8-bit images.
    """

    def __init__(self, weights_path: str):
        super().__init__()
        path = os.path.expanduser(weights_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Inception weights file {weights_path!r} does not exist. FID/KID/IS use torch-fidelity's Inception v3 "
                f"weights, read from a local file (nothing is downloaded): fetch {INCEPTION_URL} on a machine with "
                f"network access, copy it here and pass its path with --inception; or pass --feature-network "
                f"package.module:callable for your own feature extractor")
        from torchmetrics.image.fid import NoTrainInceptionV3
        try:
            self.net = NoTrainInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"], path)
        except Exception as exc:  # a truncated download, a wrong file
            raise ValueError(f"Inception weights file {weights_path!r} could not be loaded as torch-fidelity's "
                             f"Inception v3 state dict ({type(exc).__name__}: {exc}); expected {INCEPTION_URL}") from None

    def forward(self, images: torch.Tensor):
        x = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
        pool, logits = self.net._torch_fidelity_forward(x)  # both heads from one pass
        return pool.reshape(x.shape[0], -1), logits.reshape(x.shape[0], -1)


class _Select(torch.nn.Module):
    """One output of a multi-output network (both Inception heads come from a single module)."""

    def __init__(self, net: torch.nn.Module, index: int):
        super().__init__()
        self.net, self.index = net, index

    def forward(self, images):
        return self.net(images)[self.index]


def load_inception(weights_path: str):
    """(feature network (B, 2048), classifier (B, 1008)) sharing one Inception v3 read from ``weights_path``."""
    net = InceptionFeatures(weights_path).eval()
    return _Select(net, 0), _Select(net, 1)


def load_user_network(spec: str, what: str = "--feature-network") -> torch.nn.Module:
    """``package.module:attr`` -> a network taking images (B, 3, H, W) in [0, 1] and returning (B, d).

    ``attr`` may be an ``nn.Module`` instance (used as is), an ``nn.Module`` subclass (built with no
    arguments) or a factory function returning a module or a callable.
    """
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{what} {spec!r}: expected 'package.module:callable'")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{what} {spec!r}: cannot import it ({exc})") from None
    if not isinstance(obj, torch.nn.Module):
        if not callable(obj):
            raise ValueError(f"{what} {spec!r} is neither a torch module nor callable")
        obj = obj()
    if not callable(obj):
        raise ValueError(f"{what} {spec!r}: the factory returned {type(obj).__name__}, not a network")
    if isinstance(obj, torch.nn.Module):
        obj.eval()
    return obj


@torch.no_grad()
def extract_features(net, images: torch.Tensor, batch_size: int = 32, device="cpu", desc: str = "features",
                     progress: bool = True) -> torch.Tensor:
    """``net(images)`` in batches -> float64 (N, d) on the CPU; checks one row per image."""
    from tqdm.auto import tqdm
    out = []
    if isinstance(net, torch.nn.Module):
        net.to(device)
    for start in tqdm(range(0, images.shape[0], batch_size), desc=desc, disable=not progress, leave=False):
        chunk = images[start:start + batch_size].to(device)
        f = torch.as_tensor(net(chunk))
        if f.ndim == 1:
            f = f[:, None]
        if f.shape[0] != chunk.shape[0]:
            raise ValueError(f"{desc}: the network returned {f.shape[0]} rows for {chunk.shape[0]} images")
        out.append(f.reshape(f.shape[0], -1).double().cpu())
    return torch.cat(out)


class _Precomputed(torch.nn.Module):
    """The identity, posing as torchmetrics' feature network: its ``update`` then takes features directly."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x):
        return x


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two feature sets (N, d), via torchmetrics' FrechetInceptionDistance."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 real and 2 generated samples, got {real.shape[0]} and {fake.shape[0]}")
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1])).double()
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kernel_inception_distance(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> Dict[str, float]:
    """KID (unbiased MMD^2, cubic polynomial kernel) mean/std over random subsets; seeded, so repeatable.

    ``subset_size`` is capped at the smaller set (torchmetrics needs subsets no larger than either).
    """
    from torchmetrics.image.kid import KernelInceptionDistance
    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise ValueError(f"KID needs at least 2 real and 2 generated samples, got {real.shape[0]} and {fake.shape[0]}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # compute() draws its subsets with the global generator
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return {"mean": float(mean), "std": float(std), "subset_size": size, "subsets": subsets}


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> Dict[str, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) per split of the samples, mean/std over splits (torchmetrics)."""
    from torchmetrics.image.inception import InceptionScore
    splits = max(1, min(splits, logits.shape[0]))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = InceptionScore(feature=_Precomputed(logits.shape[1]), splits=splits)
    metric.update(logits.double())
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():  # compute() shuffles with the global generator
        warnings.filterwarnings("ignore", message=".*degrees of freedom.*")  # the std of a single split
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return {"mean": float(mean), "std": float(std) if splits > 1 else 0.0, "splits": splits}


def pairwise_diversity(x: torch.Tensor, groups: Sequence[str], metric: str = "rms") -> Dict[str, object]:
    """Mean distance between the samples of each group (prompt), then its mean over groups.

    metric "rms": ||a - b||_2 / sqrt(D), the root-mean-square difference per element (pixels in [0, 1]
    give a value in [0, 1]); "cosine": 1 - cos(a, b) (for feature vectors). Groups with one sample
    are skipped. Higher means more varied samples of the same prompt (mode collapse drives it to 0).
    """
    if metric not in ("rms", "cosine"):
        raise ValueError(f"diversity metric must be 'rms' or 'cosine', got {metric!r}")
    flat = x.reshape(x.shape[0], -1).double()
    if flat.shape[0] != len(groups):
        raise ValueError(f"{flat.shape[0]} samples for {len(groups)} group labels")
    index: Dict[str, List[int]] = {}
    for i, g in enumerate(groups):
        index.setdefault(g, []).append(i)
    per_group = {}
    for g, idx in index.items():
        if len(idx) < 2:
            continue
        v = flat[idx]
        if metric == "cosine":
            v = torch.nn.functional.normalize(v, dim=1)
            d = 1 - v @ v.T
        else:
            d = torch.cdist(v, v) / v.shape[1] ** 0.5
        iu = torch.triu_indices(len(idx), len(idx), 1)
        per_group[g] = float(d[iu[0], iu[1]].mean())
    mean = sum(per_group.values()) / len(per_group) if per_group else None
    return {"metric": metric, "mean": mean, "per_prompt": per_group}


def load_image_folder(folder: str, resolution: Optional[int] = None, limit: Optional[int] = None) -> torch.Tensor:
    """Images of a folder (png/jpg/jpeg/webp/bmp, sorted by name) as float (N, 3, R, R) in [0, 1].

    Each is centre-cropped to a square and resized to ``resolution`` (default: the first image's
    shorter side), so reference and generated images go through the feature network alike.
    """
    import numpy as np
    from PIL import Image
    if not os.path.isdir(folder):
        raise ValueError(f"reference image folder {folder!r} does not exist")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".bmp")))
    if limit is not None:
        names = names[:limit]
    if not names:
        raise ValueError(f"reference image folder {folder!r} holds no png/jpg/webp/bmp images")
    out = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            image = Image.open(path).convert("RGB")
        except Exception as exc:
            raise ValueError(f"reference image {path!r} cannot be read ({exc})") from None
        w, h = image.size
        side = min(w, h)
        r = resolution or side
        image = image.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
        if side != r:
            image = image.resize((r, r), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0)
    if resolution is None and len({t.shape for t in out}) > 1:
        raise ValueError(f"reference images in {folder!r} differ in size; pass a resolution")
    return torch.stack(out)
