"""Prompt-to-prompt image editing (Hertz et al. 2023): edit a generated or real image by its prompt alone.

A source prompt and an edited prompt are sampled side by side from the same noise (or the same inverted
latent); during the first ``cross_steps`` of the steps the edit's cross-attention maps are taken from the
source (Sec. 3.2), so the layout and shapes stay while the changed words change what is drawn:

- ``replace`` (word swap, "a red circle" -> "a blue circle"): every edit token attends as the source token
  in its position, ``M*_t <- M_t`` (the prompts must have the same number of tokens);
- ``refine`` (added words, "a circle" -> "a large circle"): tokens the prompts share (aligned by the longest
  matching blocks of token ids, :func:`token_alignment`) take the source's maps, new tokens keep their own,
  ``(M*_t)_{i,j} = (M_t)_{i,A(j)}`` where ``A(j)`` exists;
- ``reweight`` (attention re-weighting): the refined maps with the columns of chosen words scaled by ``c``
  (``weights={"red": 2.0}``); ``c = 1`` everywhere is refine, and with the same prompt the source itself.

The edit's self-attention maps are also the source's during the first ``self_steps`` (the official
implementation's ``self_replace_steps``: it keeps the finer layout). **Local blending** (Sec. 3.2, "local
editing"): the cross-attention of the blend words (in the source and in the edit), averaged over heads,
layers and the step, max-pooled 3x3, upsampled to the image, normalised by its maximum and thresholded at
``threshold``, is a mask ``alpha``; after every step ``y*_t <- y_t + alpha (y*_t - y_t)`` keeps everything
outside it from the source. Real images: the source row starts from an :class:`~.inversion.Inversion`
(null-text inversion, so the guided source reconstructs the image) and both rows use its per-step nulls
(Mokady et al. 2023, Sec. 4).

Sampling is deterministic DDIM with classifier-free guidance; the conditional pass of source and edit runs
as one batch under :func:`~denoisekit.models.attention_control.attention_control`, the unconditional pass
without control (as the official implementation, which edits only the conditional half).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils import check_choice, randn, seeded_generators
from ..condition import concat_conditions
from ..generation.model import LoadedModel, decode
from ..models.attention_control import attention_control
from ..models.text import TokenEncoder
from ..schedules import get_sigmas
from .inversion import Inversion, prompt_condition, text_network

Mode = Literal["replace", "refine", "reweight"]
MODES = ("replace", "refine", "reweight")


# ----------------------------------------------------------------------------------------------
# tokens


def prompt_tokens(encoder: Any, prompt: str) -> list[int]:
    """The token ids a text encoder gives ``prompt`` (position ``j`` is context token ``j``)."""
    if isinstance(encoder, TokenEncoder):
        return encoder.token_ids(prompt)
    return encoder.token_ids([prompt])[0]


def word_tokens(encoder: Any, word: str) -> list[int]:
    """The ids of ``word`` alone: its prompt's ids less the tokens every prompt has (those of ``""``:
    ``[CLS] [SEP]`` for MiniLM, BOS for the learned encoder)."""
    ids, empty = prompt_tokens(encoder, word), prompt_tokens(encoder, "")
    p = 0
    while p < min(len(ids), len(empty)) and ids[p] == empty[p]:
        p += 1
    q = 0
    while q < min(len(ids), len(empty)) - p and ids[-1 - q] == empty[-1 - q]:
        q += 1
    return ids[p:len(ids) - q]


def word_positions(encoder: Any, prompt: str, words: Sequence[str]) -> list[int]:
    """Token positions of ``words`` in ``prompt`` (every occurrence); ``ValueError`` naming a word the prompt
    lacks."""
    ids, out = prompt_tokens(encoder, prompt), []
    for word in words:
        sub = word_tokens(encoder, word)
        found = [i for i in range(len(ids) - len(sub) + 1) if sub and ids[i:i + len(sub)] == sub]
        if not found:
            raise ValueError(f"the word {word!r} is not in the prompt {prompt!r}")
        out += [i + k for i in found for k in range(len(sub))]
    return sorted(set(out))


def token_alignment(source: Sequence[int], edit: Sequence[int]) -> list[int]:
    """For each edit token the position of the same token in the source, or -1 for a new one: the matching
    blocks of ``difflib.SequenceMatcher`` (Ratcliff-Obershelp), the alignment function ``A`` of refine."""
    out = [-1] * len(edit)
    for block in difflib.SequenceMatcher(a=list(source), b=list(edit), autojunk=False).get_matching_blocks():
        for k in range(block.size):
            out[block.b + k] = block.a + k
    return out


# ----------------------------------------------------------------------------------------------
# the controller


class PromptToPromptControl:
    """The attention controller of prompt-to-prompt (module docstring) for a batch ``[n sources; n edits]``.

    ``align`` ``(L_e,)``: the source position each edit token takes its map from (-1: its own); ``weights``
    ``(L_e,)``: the column scale of each edit token (reweight) or None; ``blend``: the token positions of the
    blend words in the source and the edit, or None. :meth:`begin_step` opens a step (which maps are
    replaced), :meth:`blend_mask` reads the step's mask.
    """

    def __init__(self, n: int, align: Sequence[int], weights: Sequence[float] | None = None,
                 blend: tuple[Sequence[int], Sequence[int]] | None = None, image_size: tuple[int, int] = (16, 16)):
        self.n, self.image_size = n, image_size
        self.align = torch.tensor(list(align), dtype=torch.long)
        self.weights = None if weights is None else torch.tensor(list(weights), dtype=torch.float32)
        self.blend = blend
        self.cross_on = self.self_on = False
        self._maps: list[Tensor] = []

    def begin_step(self, cross: bool, self_attention: bool) -> None:
        self.cross_on, self.self_on = cross, self_attention
        self._maps = []

    def __call__(self, probs: Tensor, *, layer: str, cross: bool) -> Tensor:
        if probs.shape[0] != 2 * self.n:
            raise ValueError(f"prompt-to-prompt control expects a batch of {self.n} sources and {self.n} edits, "
                             f"got {probs.shape[0]} rows")
        src, edit = probs[:self.n], probs[self.n:]
        if cross:
            if self.blend is not None:
                self._collect(probs)
            if self.cross_on:
                edit = self.edit_cross(src, edit)
        elif self.self_on:
            edit = src
        return torch.cat([src, edit])

    def edit_cross(self, src: Tensor, edit: Tensor) -> Tensor:
        """The edit's cross-attention ``(n, h, N, L)`` from the source's (replace / refine / reweight)."""
        length = edit.shape[-1]
        align = F.pad(self.align, (0, max(0, length - len(self.align))), value=-1)[:length].to(edit.device)
        out = torch.where(align >= 0, src[..., align.clamp_min(0)], edit)
        if self.weights is not None:
            w = F.pad(self.weights, (0, max(0, length - len(self.weights))), value=1.0)[:length]
            out = out * w.to(out)
        return out

    def _collect(self, probs: Tensor) -> None:
        assert self.blend is not None
        src_tokens, edit_tokens = self.blend
        maps = probs.mean(1)                                             # (2n, N, L)
        picked = torch.cat([maps[:self.n, :, list(src_tokens)].sum(-1), maps[self.n:, :, list(edit_tokens)].sum(-1)])
        hgt, wid = self.image_size
        h = max(1, round((picked.shape[1] * hgt / wid) ** 0.5))
        grid = picked.reshape(-1, 1, h, picked.shape[1] // h)
        self._maps.append(F.interpolate(grid, size=self.image_size, mode="bilinear", align_corners=False))

    def blend_mask(self, threshold: float) -> Tensor | None:
        """This step's mask ``(n, 1, H, W)`` in {0, 1}: the union of the source's and the edit's thresholded
        word maps (module docstring); None before any cross-attention ran."""
        if not self._maps:
            return None
        m = F.max_pool2d(torch.stack(self._maps).mean(0), 3, stride=1, padding=1)
        m = m / m.flatten(1).amax(1).clamp_min(1e-12)[:, None, None, None]
        m = (m > threshold).float()
        return torch.maximum(m[:self.n], m[self.n:])


def edit_plan(encoder: Any, source: str, edit: str, mode: Mode,
              weights: Mapping[str, float] | None = None) -> tuple[list[int], list[float] | None]:
    """``(align, weights)`` of :class:`PromptToPromptControl` for one pair of prompts; ``ValueError`` for a
    replace of prompts with different token counts or weights of words the edit lacks."""
    check_choice("prompt-to-prompt mode", mode, MODES)
    src_ids, edit_ids = prompt_tokens(encoder, source), prompt_tokens(encoder, edit)
    if mode == "replace":
        if len(src_ids) != len(edit_ids):
            raise ValueError(f"replace swaps words token for token: {source!r} has {len(src_ids)} tokens and "
                             f"{edit!r} {len(edit_ids)}; use mode refine for added or removed words")
        return list(range(len(edit_ids))), None
    align = token_alignment(src_ids, edit_ids)
    if mode == "refine":
        if weights:
            raise ValueError("weights apply to mode reweight")
        return align, None
    if not weights:
        raise ValueError("reweight needs weights: a word of the edit and its attention scale, e.g. red=2")
    scale = [1.0] * len(edit_ids)
    for word, c in weights.items():
        for j in word_positions(encoder, edit, [word]):
            scale[j] = float(c)
    return align, scale


def plan_edit(model: LoadedModel, source: str, edit: str, *, mode: Mode = "replace",
              weights: Mapping[str, float] | None = None, blend: tuple[Sequence[str], Sequence[str]] | None = None
              ) -> tuple[list[int], list[float] | None, tuple[list[int], list[int]] | None]:
    """``(align, weights, blend tokens)`` of an edit of a text model (:func:`edit_plan` and the token positions
    of the blend words); ``ValueError`` for anything the edit cannot do, before any sampling."""
    net = text_network(model)
    if net is None:
        raise ValueError(f"prompt-to-prompt needs a text model; this one is conditioned on {model.kind!r}")
    encoder = net.encoder
    align, scale = edit_plan(encoder, source, edit, mode, weights)
    tokens = None if blend is None else (word_positions(encoder, source, blend[0]),
                                         word_positions(encoder, edit, blend[1]))
    return align, scale, tokens


# ----------------------------------------------------------------------------------------------
# the pipeline


@dataclass(frozen=True)
class EditResult:
    """``source`` and ``edit`` images ``(n, C, H, W)``; ``mask`` ``(n, 1, H, W)``, the last local-blend mask
    (None without blending)."""

    source: Tensor
    edit: Tensor
    mask: Tensor | None = None


@torch.no_grad()
def prompt_to_prompt(model: LoadedModel, source: str, edit: str, *, n: int = 1, mode: Mode = "replace",
                     scale: float | None = None, steps: int = 50, schedule: str | None = None,
                     cross_steps: float = 0.8, self_steps: float = 0.4, weights: Mapping[str, float] | None = None,
                     blend: tuple[Sequence[str], Sequence[str]] | None = None, threshold: float = 0.3,
                     seed: int = 0, inversion: Inversion | None = None) -> EditResult:
    """``n`` images of ``source`` and their edits to ``edit`` (module docstring), sample ``i`` from seed
    ``seed + i``, or from ``inversion`` (its latent, grid and per-step nulls; ``n`` is then its batch).

    ``scale``: the guidance (default the run's); ``cross_steps`` / ``self_steps``: the fraction of the steps
    (from the start) in which cross- / self-attention maps are injected; ``blend``: the words of the source
    and of the edit whose maps bound the local edit.
    """
    for name, v in (("cross_steps", cross_steps), ("self_steps", self_steps), ("threshold", threshold)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    align, w_tokens, tokens = plan_edit(model, source, edit, mode=mode, weights=weights, blend=blend)
    w = model.defaults.cfg_scale if scale is None else float(scale)
    if inversion is not None:
        n, sigmas, y = inversion.latent.shape[0], inversion.sigmas, inversion.latent
    else:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        sigmas = get_sigmas(model.process, schedule or model.defaults.schedule, steps)
        y = randn((n, *model.image_shape), seeded_generators(seed, n), device=model.device) * float(
            model.process.prior_std(sigmas[0]))
    hgt, wid = model.image_shape[-2:]
    control = PromptToPromptControl(n, align, w_tokens, tokens, (hgt, wid))
    cond = prompt_condition(model, [source] * n + [edit] * n)
    null = prompt_condition(model, [""] * (2 * n))
    y = torch.cat([y, y])
    s = sigmas.tolist()
    total, mask = len(s) - 1, None
    for i in range(total):
        level = torch.full((2 * n,), s[i], dtype=torch.float64, device=y.device)
        control.begin_step(i < cross_steps * total, i < self_steps * total)
        with attention_control(model.denoiser, control):  # type: ignore[arg-type]
            x0 = model.denoiser(y, level, cond)
        if w != 1:
            uncond = null if inversion is None or inversion.nulls is None else concat_conditions(
                inversion.nulls[i], inversion.nulls[i])
            x0_u = model.denoiser(y, level, uncond)
            x0 = x0_u + w * (x0 - x0_u)
        y = x0 + (s[i + 1] / s[i]) * (y - x0)
        mask = control.blend_mask(threshold) if blend is not None else None
        if mask is not None:
            y = torch.cat([y[:n], y[:n] + mask.to(y) * (y[n:] - y[:n])])
    images = decode(model.decoder, y) if model.decoder is not None else y
    return EditResult(images[:n], images[n:], mask)
