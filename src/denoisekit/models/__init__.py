"""Networks. ``MODELS`` maps a config name to a class whose ``config_class`` is its frozen dataclass."""

from __future__ import annotations

from torch import nn

from .diffusers_unet import DiffusersUNet, DiffusersUNetConfig
from .dit import DiT, DiTConfig
from .mlp import MLP, MLPConfig, TimeLinearConfig, TimeLinearMLP
from .unet import UNet, UNetConfig

MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "timelinear": TimeLinearMLP, "unet": UNet, "dit": DiT,
                                      "diffusers_unet": DiffusersUNet}

# Not denoiser networks (so not in MODELS): the generative-model baselines of benchmarks/zoo.py.
from .gan import DCGAN, DCGANConfig  # noqa: E402
from .vae import VAE, VAEConfig  # noqa: E402

__all__ = ["DCGAN", "DCGANConfig", "DiffusersUNet", "DiffusersUNetConfig", "DiT", "DiTConfig", "MLP", "MLPConfig",
           "MODELS", "TimeLinearConfig", "TimeLinearMLP", "UNet", "UNetConfig", "VAE", "VAEConfig"]
