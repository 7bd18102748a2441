"""Real photographs for calibrating and scoring ImageNet classifiers, with no download.

scikit-image bundles a handful of colour photos in ``skimage.data`` (no network: the ones that need
pooch are left out). Int8 fidelity measured on noise says little about a deployed classifier, and
ImageNet itself is not redistributable, so these are the images: unlabelled (fidelity is agreement
with the fp32 model, not accuracy), several crops and flips of each photo to get enough samples.

Calibration and evaluation come from DISJOINT photos, so an evaluation score is never on pixels the
calibration saw: calibration from ``CALIBRATION_PHOTOS`` (5 photos of 4 scenes: the stereo pair's two
views both belong to calibration), evaluation from ``EVALUATION_PHOTOS`` (2 photos). Left out:
``astronaut`` and ``hubble_deep_field``, on whose crops EfficientNet-Lite0's fp32 top-1 is a near-tie
(median top-2 probability margin 0.03 and 0.015, against 0.25 on chelsea), so that top-1 agreement
there measures rounding luck rather than the quantization; and the synthetic colorwheel and logo.
Each sample is a random-resized crop (area 25-100 % of the photo, aspect 3:4 to 4:3, torchvision's
``RandomResizedCrop``) with a random horizontal flip, seeded, so a dataset is the same on every
machine; photos are taken in turn, so any prefix (or suffix) of a dataset covers all its photos.
"""

from __future__ import annotations

from typing import Sequence

import torch

from edgeprobe.compress import Dataset
from edgeprobe.errors import UsageError

CALIBRATION_PHOTOS = ("rocket", "stereo_motorcycle:left", "immunohistochemistry", "stereo_motorcycle:right", "retina")
EVALUATION_PHOTOS = ("chelsea", "coffee")
SPLITS = {"calibration": CALIBRATION_PHOTOS, "evaluation": EVALUATION_PHOTOS}


def _photo(name: str, side: int) -> torch.Tensor:
    """One skimage photo as float RGB (3, H, W) in [0, 1], shrunk so its shorter side is 2 * ``side``
    (a quarter-area crop still has the model's full resolution; resizing later crops is then cheap)."""
    import skimage.data
    from torchvision.transforms.v2 import functional as F

    base, _, view = name.partition(":")
    img = getattr(skimage.data, base)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
        img = img[{"left": 0, "right": 1}[view]]
    x = torch.from_numpy(img[..., :3].copy()).permute(2, 0, 1).float() / 255.0
    if min(x.shape[1:]) > 2 * side:
        x = F.resize(x, 2 * side, antialias=True)
    return x


def photos(split: str, samples: int, side: int, mean: Sequence[float], std: Sequence[float], *,
           seed: int = 0) -> Dataset:
    """``samples`` crops of ``split``'s photos (``calibration`` or ``evaluation``) as a (N, 3, side, side)
    Dataset, normalised ``(x - mean) / std`` as the model expects (see ``models.zoo.PREPROCESS``)."""
    from torchvision.transforms import v2

    if split not in SPLITS:
        raise UsageError(f"photos: split must be one of {', '.join(SPLITS)}, got {split!r}")
    if samples < 1:
        raise UsageError(f"photos: samples must be >= 1, got {samples}")
    images = [_photo(n, side) for n in SPLITS[split]]
    augment = v2.Compose([v2.RandomResizedCrop(side, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
                          v2.RandomHorizontalFlip()])
    normalise = v2.Normalize(list(mean), list(std))
    out = torch.empty(samples, 3, side, side)
    with torch.random.fork_rng(devices=[]):  # seeded crops without disturbing the caller's RNG
        torch.manual_seed(seed)
        for i in range(samples):
            out[i] = normalise(augment(images[i % len(images)]))
    return Dataset(out)


def for_model(name: str, split: str, samples: int, *, seed: int = 0) -> Dataset:
    """``photos`` preprocessed as zoo model ``name`` expects (its ``models.zoo.PREPROCESS`` entry)."""
    from edgeprobe.models.zoo import PREPROCESS

    if name not in PREPROCESS:
        raise UsageError(f"photos: no preprocessing known for {name!r}; known: {', '.join(sorted(PREPROCESS))} "
                         "(or call photos() with side, mean and std)")
    p = PREPROCESS[name]
    return photos(split, samples, p.side, p.mean, p.std, seed=seed)
