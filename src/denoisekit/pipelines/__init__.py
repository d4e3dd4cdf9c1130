"""User tasks built on :func:`~denoisekit.generation.generate`: class-, text- and unconditional generation
from a user's inputs (:mod:`~denoisekit.pipelines.generate`), image-to-image restoration (Palette) and
super-resolution cascades (Cascaded Diffusion), and fitting a learned solver to a run (:mod:`~.tune`)."""

from .generate import Generated, generate_images, user_condition
from .palette import cascade, restore

__all__ = ["Generated", "cascade", "generate_images", "restore", "user_condition"]
