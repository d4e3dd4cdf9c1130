"""User-level tasks built from a denoiser, a sampler and a conditioning: image-to-image restoration
(Palette) and super-resolution cascades (Cascaded Diffusion)."""

from .palette import cascade, restore

__all__ = ["cascade", "restore"]
