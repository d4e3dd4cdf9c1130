"""ControlNet (Zhang et al. 2023) and T2I-Adapter (Mou et al. 2023) over the :class:`~denoisekit.models.unet.UNet`.

=============  ===========================================================================================
module         what it adds to the frozen U-Net
=============  ===========================================================================================
ControlNet     a trainable copy of the encoder and middle block (weights copied from the base), fed
               ``conv_in(x) + hint_encoder(control)``; a zero-initialised 1x1 conv on each of its skips and
               on its middle output gives one residual per skip of the base plus one for its middle
               (Zhang et al. 2023, Sec. 3.1-3.2, eq. 2: ``y_c = F(x) + Z(F(x + Z(c)))``). Runs every step.
T2IAdapter     a small conv encoder of the control image alone, one feature per level added to the base
               encoder's activations after the level's last block (Mou et al. 2023, Sec. 3.2, eq. 4); it
               sees neither ``x`` nor the time, so it runs once per sample (cached while sampling).
=============  ===========================================================================================

Both start at the base exactly (their output convs are zero). :class:`ControlledNet` puts any number of them
on a U-Net, each at a ``conditioning_scale`` (residuals and features add up, scaled), reading its slice of the
channels of ``cond["control"]`` (the condition key for control images: kept by classifier-free guidance's null
condition). :class:`ControlledDenoiser` is the denoiser wrapper: it switches control on only between
``control_guidance_start`` and ``_end`` (fractions of the trajectory, read from sigma), so every sampler and
CFG get it; a scale of 0, or no control image, is the base bit for bit.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._utils import as_batch, check_choice
from ..condition import index_condition
from ..denoiser import DenoiserFn, DenoiserWrapper
from ..io import save_tensors_atomic
from ..prediction import Denoiser
from .unet import UNet

ControlKind = Literal["controlnet", "t2i_adapter"]
CONTROL_KINDS = ("controlnet", "t2i_adapter")


@dataclass(frozen=True)
class ControlConfig:
    """The shape of a control module: ``kind``, ``hint_channels`` of its control image, ``hidden`` widths of
    the hint encoder (ControlNet) or per-level blocks (T2I-Adapter), and ``downsample``: how many times
    larger than the U-Net's input the control image is (a power of 2: 1 for pixel models)."""

    kind: ControlKind = "controlnet"
    hint_channels: int = 1
    hidden: tuple[int, ...] = (16, 32)
    downsample: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        check_choice("control kind", self.kind, CONTROL_KINDS)
        if not isinstance(self.hint_channels, int) or self.hint_channels < 1:
            raise ValueError(f"control hint_channels must be an integer >= 1, got {self.hint_channels!r}")
        if not self.hidden or not all(isinstance(h, int) and h >= 1 for h in self.hidden):
            raise ValueError(f"control hidden must be a non-empty list of integers >= 1, got {list(self.hidden)}")
        d = self.downsample
        if not isinstance(d, int) or d < 1 or d & (d - 1):
            raise ValueError(f"control downsample must be a power of 2 (1 for pixel models), got {d!r}")
        if self.kind == "controlnet" and d.bit_length() - 1 > len(self.hidden) - 1:
            raise ValueError(f"control downsample {d} needs {d.bit_length() - 1} stride-2 convs: give at least "
                             f"{d.bit_length()} hidden widths, got {list(self.hidden)}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ControlConfig:
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _check_hint(hint: Tensor, channels: int, size: tuple[int, int], what: str) -> None:
    if hint.ndim != 4 or hint.shape[1] != channels or tuple(hint.shape[2:]) != size:
        raise ValueError(f"{what}: the control image must have shape (B, {channels}, {size[0]}, {size[1]}), "
                         f"got {tuple(hint.shape)}")


class ControlNet(nn.Module):
    """``controlnet(x, time, cond, hint) -> residuals`` (one per skip of the base, then the middle's), from a
    trainable copy of ``base``'s encoder and middle block (Zhang et al. 2023, Sec. 3.2)."""

    def __init__(self, base: UNet, config: ControlConfig):
        super().__init__()
        if not isinstance(base, UNet):
            raise ValueError(f"a ControlNet copies a U-Net's encoder; got {type(base).__name__}")
        self.config = config
        enc = copy.deepcopy(base)  # the weights copied: training starts from the base's encoder
        enc.up, enc.norm_out, enc.conv_out = nn.ModuleList(), None, None  # the decoder is the base's alone
        self.encoder = enc.requires_grad_(True)
        steps = config.downsample.bit_length() - 1
        hidden, layers = config.hidden, [nn.Conv2d(config.hint_channels, config.hidden[0], 3, padding=1), nn.SiLU()]
        for j, (a, b) in enumerate(zip(hidden[:-1], hidden[1:])):
            layers += [nn.Conv2d(a, a, 3, padding=1), nn.SiLU(),
                       nn.Conv2d(a, b, 3, padding=1, stride=2 if j < steps else 1), nn.SiLU()]
        layers.append(_zero(nn.Conv2d(hidden[-1], base.config.channels, 3, padding=1)))
        self.hint_encoder = nn.Sequential(*layers)
        self.zero_convs = nn.ModuleList(_zero(nn.Conv2d(c, c, 1)) for c in base.skip_channels)
        mid = base.skip_channels[-1]
        self.mid_zero = _zero(nn.Conv2d(mid, mid, 1))

    def forward(self, x: Tensor, time: Tensor | float, cond: Any, hint: Tensor) -> list[Tensor]:
        d = self.config.downsample
        _check_hint(hint, self.config.hint_channels, (x.shape[2] * d, x.shape[3] * d), "ControlNet")
        h, emb, ctx, mask = self.encoder.embed(x, time, cond)
        h = h + self.hint_encoder(hint.to(h.dtype))
        h, skips = self.encoder.encode(h, emb, ctx, mask)
        return [z(s) for z, s in zip(self.zero_convs, skips, strict=True)] + [self.mid_zero(h)]


class _ResConv(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class T2IAdapter(nn.Module):
    """``adapter(hint) -> features`` (one per level of the base, at its width and resolution): Mou et al.
    2023, Sec. 3.2, with one residual conv block per ``hidden`` entry at each level and zero output convs.

    It reads only the control image, so while sampling (no gradients) the features of the last control image
    are kept and reused: the adapter runs once per sample, not once per step."""

    def __init__(self, base: UNet, config: ControlConfig):
        super().__init__()
        if not isinstance(base, UNet):
            raise ValueError(f"a T2I-Adapter feeds a U-Net's encoder; got {type(base).__name__}")
        self.config, c = config, base.config
        widths = [c.channels * m for m in c.channel_mult]
        down = [nn.Conv2d(config.hint_channels, widths[0], 3, padding=1)]
        for _ in range(config.downsample.bit_length() - 1):  # a latent model's larger control image
            down += [nn.SiLU(), nn.Conv2d(widths[0], widths[0], 3, padding=1, stride=2)]
        self.conv_in = nn.Sequential(*down)
        self.levels = nn.ModuleList()
        self.downs = nn.ModuleList()
        for i, w in enumerate(widths):
            if i:
                self.downs.append(nn.Conv2d(widths[i - 1], w, 3, padding=1, stride=2))
            self.levels.append(nn.Sequential(*(_ResConv(w) for _ in config.hidden)))
        self.outs = nn.ModuleList(_zero(nn.Conv2d(w, w, 1)) for w in widths)
        self._cache: tuple[Tensor, list[Tensor]] | None = None
        self.calls = 0  # encoder runs (what the once-per-sample test counts)

    def forward(self, hint: Tensor, size: tuple[int, int] | None = None) -> list[Tensor]:
        d = self.config.downsample
        if size is not None:
            _check_hint(hint, self.config.hint_channels, (size[0] * d, size[1] * d), "T2I-Adapter")
        caching = not torch.is_grad_enabled()
        if caching and self._cache is not None:
            seen, feats = self._cache
            if seen.shape == hint.shape and seen.device == hint.device and torch.equal(seen, hint):
                return feats
        self.calls += 1
        h, feats = self.conv_in(hint.to(self.outs[0].weight.dtype)), []
        for i, level in enumerate(self.levels):
            if i:
                h = self.downs[i - 1](h)
            h = level(h)
            feats.append(self.outs[i](h))
        self._cache = (hint.detach().clone(), feats) if caching else None
        return feats


CONTROL_MODULES: dict[str, type] = {"controlnet": ControlNet, "t2i_adapter": T2IAdapter}


def build_control(base: UNet, config: ControlConfig) -> nn.Module:
    """A fresh control module of ``config.kind`` for ``base`` (a ControlNet copies ``base``'s weights)."""
    return CONTROL_MODULES[config.kind](base, config)


def find_unet(net: nn.Module) -> UNet:
    """The U-Net inside ``net`` (itself, or the ``.net`` of wrappers such as the text-conditioned one)."""
    seen = net
    while not isinstance(seen, UNet):
        inner = getattr(seen, "net", None)
        if not isinstance(inner, nn.Module):
            raise ValueError(f"ControlNet and T2I-Adapter need a U-Net; this model's network is "
                             f"{type(net).__name__}")
        seen = inner
    return seen


def _add(acc: list[Tensor] | None, parts: Sequence[Tensor], scale: float) -> list[Tensor]:
    scaled = [p * scale for p in parts] if scale != 1 else list(parts)
    return scaled if acc is None else [a + p for a, p in zip(acc, scaled, strict=True)]


class ControlledNet(nn.Module):
    """``net(x, time, cond)`` of a U-Net with control modules, each at its scale, reading consecutive channel
    slices of ``cond["control"]`` (in ``controls`` order). Without a control image, or at scale 0 for all, it
    is the U-Net itself; ``scales`` may be changed in place."""

    def __init__(self, net: UNet, controls: Sequence[nn.Module], scales: float | Sequence[float] = 1.0):
        super().__init__()
        if not controls:
            raise ValueError("ControlledNet: give at least one ControlNet or T2I-Adapter")
        self.net, self.controls = net, nn.ModuleList(controls)
        self.set_scales(scales)

    def set_scales(self, scales: float | Sequence[float]) -> None:
        values = [float(scales)] * len(self.controls) if isinstance(scales, (int, float)) else [float(s) for s in scales]
        if len(values) != len(self.controls):
            raise ValueError(f"got {len(values)} conditioning scales for {len(self.controls)} control modules")
        self.scales = values

    @property
    def hint_channels(self) -> int:
        return sum(m.config.hint_channels for m in self.controls)

    def forward(self, x: Tensor, time: Tensor | float, cond: Any = None) -> Tensor:
        control = cond.get("control") if isinstance(cond, dict) else None
        if isinstance(cond, dict) and "control" in cond:
            cond = {k: v for k, v in cond.items() if k != "control"} or None
        if control is None or not any(self.scales):
            return self.net(x, time, cond)
        control = torch.as_tensor(control, device=x.device)
        if control.ndim != 4 or control.shape[1] != self.hint_channels or control.shape[0] != x.shape[0]:
            raise ValueError(f"cond['control'] must have shape ({x.shape[0]}, {self.hint_channels}, H, W) "
                             f"(the control images of {len(self.controls)} module(s)), got {tuple(control.shape)}")
        residuals = features = None
        start = 0
        for module, scale in zip(self.controls, self.scales, strict=True):
            hint = control[:, start:start + module.config.hint_channels]
            start += module.config.hint_channels
            if scale == 0:
                continue
            if isinstance(module, T2IAdapter):
                features = _add(features, module(hint, tuple(x.shape[2:])), scale)
            else:
                residuals = _add(residuals, module(x, time, cond, hint), scale)
        if residuals is None and features is None:
            return self.net(x, time, cond)
        return self.net(x, time, cond, residuals=residuals, features=features)


def with_controls(net: nn.Module, controls: Sequence[nn.Module], scales: float | Sequence[float] = 1.0) -> nn.Module:
    """``net`` with a :class:`ControlledNet` in place of its U-Net: ``net`` itself is left as it is (wrappers
    above the U-Net, such as the text-conditioned one, are shallow copies sharing their other parts)."""
    if isinstance(net, UNet):
        return ControlledNet(net, controls, scales)
    inner = getattr(net, "net", None)
    if not isinstance(inner, nn.Module):
        find_unet(net)  # its error
    out = copy.copy(net)
    out._modules = dict(net._modules)  # a new table: setting .net must not touch the original
    out.net = with_controls(inner, controls, scales)
    return out


def controlled_net(net: nn.Module) -> ControlledNet | None:
    """The :class:`ControlledNet` inside ``net``, if any."""
    seen: Any = net
    while isinstance(seen, nn.Module):
        if isinstance(seen, ControlledNet):
            return seen
        seen = getattr(seen, "net", None)
    return None


class ControlledDenoiser(DenoiserWrapper):
    """A denoiser whose network carries control modules, with control only over part of the trajectory.

    ``inner`` is a :class:`~denoisekit.prediction.Denoiser` whose network has a :class:`ControlledNet`
    (:func:`with_controls`). The control image is ``cond["control"]``, else ``control`` ``(1, C, H, W)``, one
    image for every sample, given here. Control is on for a sample at VE noise ``sigma`` while ``start <= 1 - t(sigma) <= end``,
    ``t`` the process time of ``sigma`` (1: pure noise): the fraction of the trajectory done, which on a
    uniform-in-t grid is diffusers' ``control_guidance_start`` / ``_end`` fraction of steps, and which every
    sampler and CFG see alike. Outside it the network gets no control image: the base, exactly.
    """

    def __init__(self, inner: DenoiserFn, *, control: Tensor | None = None, start: float = 0.0, end: float = 1.0):
        super().__init__(inner)
        if controlled_net(getattr(inner, "net", None)) is None:
            raise ValueError("ControlledDenoiser wraps a Denoiser whose network has control modules "
                             "(models.controlnet.with_controls)")
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"control_guidance_start/end must satisfy 0 <= start <= end <= 1, got {start}, {end}")
        if control is not None and (control.ndim != 4 or control.shape[0] != 1):
            raise ValueError(f"the default control image must have shape (1, C, H, W) (per-sample ones go in "
                             f"cond['control']), got {tuple(control.shape)}")
        self.start, self.end = float(start), float(end)
        self.control = control

    @property
    def controlled(self) -> ControlledNet:
        out = controlled_net(self.inner.net)
        assert out is not None
        return out

    def forward(self, y: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        parts = dict(cond) if isinstance(cond, dict) else ({} if cond is None else {"labels": cond})
        control = parts.pop("control", None)
        if control is None and self.control is not None:
            control = self.control.to(y.device)
            control = control.expand(y.shape[0], *control.shape[1:])
        rest = parts or None
        if control is None:
            return self.inner(y, sigma, rest)
        sigma64 = as_batch(sigma, y)
        done = 1 - self.process.t_from_sigma(sigma64).to(torch.float64)
        on = (done >= self.start - 1e-9) & (done <= self.end + 1e-9)
        if bool(on.all()):
            return self.inner(y, sigma, {**parts, "control": control})
        if not bool(on.any()):
            return self.inner(y, sigma, rest)
        out = torch.empty_like(y)
        for mask, with_control in ((on, True), (~on, False)):
            idx = mask.nonzero().flatten()
            sub = index_condition(parts, idx) if parts else {}
            if with_control:
                sub = {**sub, "control": control[idx.to(control.device)]}
            out[idx] = self.inner(y[idx], sigma64[idx], sub or None)
        return out


def controlled_denoiser(denoiser: Denoiser, controls: Sequence[nn.Module], scales: float | Sequence[float] = 1.0, *,
                        control: Tensor | None = None, start: float = 0.0, end: float = 1.0) -> ControlledDenoiser:
    """``denoiser`` (a :class:`~denoisekit.prediction.Denoiser` over a U-Net) with ``controls`` at ``scales``
    (its ``conditioning_scale``), on between ``start`` and ``end`` (``control_guidance_start`` / ``_end``);
    ``denoiser`` itself is left as it is."""
    if not isinstance(denoiser, Denoiser):
        raise ValueError(f"control modules go on a Denoiser over a U-Net; got {type(denoiser).__name__}")
    inner = Denoiser(with_controls(denoiser.net, controls, scales), denoiser.process, denoiser.prediction,
                     time_input=denoiser.time_input, sigma_data=denoiser.sigma_data)
    return ControlledDenoiser(inner, control=control, start=start, end=end)


# ----------------------------------------------------------------------------------------------
# files: the module's tensors, its config and its base's weights hash (safetensors metadata)

FORMAT = "denoisekit.controlnet"
CONTROL_FILE = "controlnet.safetensors"


def save_control(module: nn.Module, path: str | os.PathLike[str], *, base_sha256: str | None = None,
                 signal: str | None = None) -> Path:
    """Write a control module (its tensors only) with its config, the control signal it was trained on and its
    base's hash, atomically."""
    meta = {"format": FORMAT, "control_config": module.config.to_json()}
    if base_sha256:
        meta["base_sha256"] = base_sha256
    if signal:
        meta["signal"] = signal
    path = Path(path)
    save_tensors_atomic(path, {k: v.detach().contiguous() for k, v in module.state_dict().items()}, meta)
    return path


def read_control(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """A control file's tensors and metadata; a missing, corrupt or foreign file is one line naming it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"control file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors' own error types for truncated or foreign files
        raise ValueError(f"control file {str(path)!r}: cannot read safetensors ({e})") from None
    if meta.get("format") != FORMAT or "control_config" not in meta:
        raise ValueError(f"control file {str(path)!r} is not a denoisekit ControlNet / T2I-Adapter file")
    return tensors, meta


def load_control(path: str | os.PathLike[str], base: UNet, *, base_sha256: str | None = None) -> nn.Module:
    """The control module in file ``path``, built for ``base`` (frozen, eval mode). A file made for another base
    (hash or shapes differ) is one ``ValueError`` naming the file and what differs."""
    tensors, meta = read_control(path)
    source = f"control file {str(path)!r}"
    if base_sha256 and meta.get("base_sha256") and meta["base_sha256"] != base_sha256:
        raise ValueError(f"{source} was trained on another base (sha256 {meta['base_sha256'][:12]}..., this model "
                         f"{base_sha256[:12]}...)")
    module = build_control(base, ControlConfig.from_dict(json.loads(meta["control_config"])))
    own = module.state_dict()
    unknown, missing = sorted(set(tensors) - set(own)), sorted(set(own) - set(tensors))
    if unknown or missing:
        raise ValueError(f"{source} does not fit this base: unknown {unknown[:3]}, missing {missing[:3]}")
    for k, v in tensors.items():
        if v.shape != own[k].shape:
            raise ValueError(f"{source} does not fit this base: {k} is {tuple(v.shape)}, the base needs "
                             f"{tuple(own[k].shape)}")
    module.load_state_dict(tensors)
    module.signal = meta.get("signal")
    return module.eval().requires_grad_(False)
