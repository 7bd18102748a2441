"""A small zoo of models that need no download: for tests, demos and accuracy checks."""

from __future__ import annotations

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


_BUILDERS = {
    "tiny_cnn": (TinyCNN, (1, 3, 32, 32)),
    "digits_cnn": (DigitsCNN, (1, 1, 8, 8)),
}
NAMES = tuple(sorted(_BUILDERS))


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    import torch

    torch.manual_seed(0)
    cls, shape = _BUILDERS[name]
    return cls(), shape
