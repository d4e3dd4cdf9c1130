"""A diffusers U-Net (``UNet2DModel`` or ``UNet2DConditionModel``) as a denoisekit network.

``net(x (B, C, H, W), time (B,), cond) -> (B, C_out, H, W)`` calls the diffusers module built from its own
``config.json`` (kept verbatim in :class:`DiffusersUNetConfig`), so an imported model is exactly the model its
authors trained: diffusers' blocks (additive or scale-shift time embedding, affine second GroupNorm,
``Transformer2DModel`` with a feed-forward) are not all expressible in :class:`~denoisekit.models.unet.UNet`
(see :mod:`denoisekit.compat.diffusers_unet` for the direction that does map). ``time`` is the process's step
index, as diffusers' schedulers give it (``process.time_input: model`` of a ``ddpm`` process).

A ``time_embedding_type: learned`` model (one embedding row per training step, what
:func:`denoisekit.compat.diffusers_io.export_diffusers` writes) is read between steps by linear interpolation of
neighbouring rows, so samplers that evaluate at fractional steps work; at integer steps it is diffusers' own lookup.

``cond``: labels -> ``class_labels`` (the last embedding row is the null label, as an exported denoisekit run
writes it); ``context`` / ``embedding`` (+ ``context_mask``) -> ``encoder_hidden_states`` /
``encoder_attention_mask`` of a ``UNet2DConditionModel``; without one it attends to a single zero token (the
``embedding`` null of :mod:`denoisekit.condition`). diffusers is imported only when the network is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .layers import as_time, parse_conditioning

DIFFUSERS_CLASSES = ("UNet2DModel", "UNet2DConditionModel")


@dataclass(frozen=True)
class DiffusersUNetConfig:
    """``cls``: the diffusers class; ``config``: its ``config.json`` as a JSON string (hashable, verbatim);
    ``num_classes`` / ``context_dim``: what the config implies (``num_class_embeds - 1``, ``cross_attention_dim``),
    repeated here because a run's config reads them from ``model.*`` (checked against the config)."""

    cls: Literal["UNet2DModel", "UNet2DConditionModel"] = "UNet2DModel"
    config: str = "{}"
    num_classes: int | None = None
    context_dim: int | None = None

    def __post_init__(self) -> None:
        if self.cls not in DIFFUSERS_CLASSES:
            raise ValueError(f"DiffusersUNetConfig.cls must be one of {', '.join(DIFFUSERS_CLASSES)}, got {self.cls!r}")
        if isinstance(self.config, dict):  # YAML gives a mapping: store the canonical JSON string
            object.__setattr__(self, "config", json.dumps(self.config, sort_keys=True))
        try:
            parsed = json.loads(self.config)
        except json.JSONDecodeError as e:
            raise ValueError(f"DiffusersUNetConfig.config is not JSON: {e}") from None
        if not isinstance(parsed, dict):
            raise ValueError("DiffusersUNetConfig.config must be a JSON object (a diffusers config.json)")
        embeds = parsed.get("num_class_embeds") if parsed.get("class_embed_type") is None else None
        implied = embeds - 1 if isinstance(embeds, int) and embeds > 1 else None
        if self.num_classes != implied:
            raise ValueError(f"DiffusersUNetConfig.num_classes must be {implied} (num_class_embeds={embeds}, the "
                             f"last row the null label), got {self.num_classes}")
        ctx = parsed.get("cross_attention_dim", 1280) if self.cls == "UNet2DConditionModel" else None
        if self.context_dim != ctx:
            raise ValueError(f"DiffusersUNetConfig.context_dim must be {ctx} (the config's cross_attention_dim), "
                             f"got {self.context_dim}")

    @property
    def options(self) -> dict[str, Any]:
        return {k: v for k, v in json.loads(self.config).items() if not k.startswith("_")}


def _require_diffusers() -> Any:
    try:
        import diffusers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("a diffusers network needs the diffusers package: pip install diffusers") from err
    return diffusers


class DiffusersUNet(nn.Module):
    """A diffusers U-Net built from its config; its parameters are ``unet.<diffusers name>``."""

    config_class = DiffusersUNetConfig

    def __init__(self, config: DiffusersUNetConfig | None = None, **overrides: Any):
        super().__init__()
        if config is None:
            config = DiffusersUNetConfig(**overrides)
        elif overrides:
            raise ValueError("give a DiffusersUNetConfig or keyword overrides, not both")
        self.config = config
        cls = getattr(_require_diffusers(), config.cls)
        try:
            self.unet = cls(**config.options)
        except (TypeError, ValueError, AttributeError) as e:  # diffusers' own message names the bad key
            raise ValueError(f"diffusers could not build {config.cls} from its config: {e}") from None
        opts = self.unet.config
        num_embeds = opts.get("num_class_embeds")
        self.num_classes = num_embeds - 1 if num_embeds else None
        self.context_dim = opts.get("cross_attention_dim") if config.cls == "UNet2DConditionModel" else None
        if isinstance(self.context_dim, (list, tuple)):
            raise ValueError("a per-block cross_attention_dim is not supported (one context width)")
        self.in_channels = int(opts["in_channels"])
        if opts.get("time_embedding_type") == "learned":
            table = self.unet.time_proj
            self.unet.time_proj = _LerpEmbedding(table.num_embeddings, table.embedding_dim)

    def forward(self, x: Tensor, time: Tensor | float, cond: Any = None) -> Tensor:
        info = parse_conditioning(cond, x, num_classes=self.num_classes, context_dim=self.context_dim)
        kwargs: dict[str, Any] = {"class_labels": info.labels} if info.labels is not None else {}
        if self.context_dim is not None:
            ctx = info.context if info.context is not None else x.new_zeros(x.shape[0], 1, self.context_dim)
            kwargs["encoder_hidden_states"] = ctx
            if info.context_mask is not None and info.context is not None:
                kwargs["encoder_attention_mask"] = info.context_mask.to(x.dtype)
        t = as_time(time, x).to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        return self.unet(x, t, return_dict=False, **kwargs)[0]


class _LerpEmbedding(nn.Embedding):
    """``nn.Embedding`` over step indices that also takes fractional steps: rows ``floor(t)`` and ``floor(t) + 1``
    mixed linearly (exactly the row at an integer step). Same ``weight``, so diffusers' state dict loads."""

    def forward(self, t: Tensor) -> Tensor:  # type: ignore[override]
        t = t.to(torch.float64).clamp(0, self.num_embeddings - 1)
        lo = t.floor().long().clamp(max=self.num_embeddings - 2)
        w = (t - lo).to(self.weight.dtype)[:, None]
        return torch.lerp(self.weight[lo], self.weight[lo + 1], w)
