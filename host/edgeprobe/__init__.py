"""edgeprobe: lower PyTorch models for edge devices and measure them there, honestly."""

from edgeprobe.versions import __version__

__all__ = ["__version__"]
