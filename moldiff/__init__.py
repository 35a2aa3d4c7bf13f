"""moldiff: E(3)-equivariant diffusion models for 3D molecule generation."""

__version__ = "0.1.0"

__all__ = ["__version__"]
