"""What the benchmark scripts share: their section of RESULTS.md, and diffusers' U-Net in our layout."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("RESULTS.md")


def write_section(text: str, section: str, path: Path = RESULTS) -> None:
    """Replace the ``section`` (a ``## ...`` heading) of RESULTS.md up to the next ``## ``, or append it,
    leaving the other sections alone."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


def diffusers_unet(options: Mapping[str, Any], size: int, base: int, channels: int = 1) -> Any:
    """diffusers' ``UNet2DModel`` with the layout of a denoisekit U-Net config's ``options`` (levels,
    blocks per level, attention levels, heads, norm groups) at ``base`` width."""
    from diffusers import UNet2DModel

    mult, attn = list(options["channel_mult"]), set(options.get("attention_levels", ()))
    down = tuple("AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(len(mult)))
    up = tuple("AttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(range(len(mult))))
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels,
                       layers_per_block=options.get("num_res_blocks", 2), block_out_channels=tuple(base * m for m in mult),
                       down_block_types=down, up_block_types=up, norm_num_groups=options.get("norm_groups", 32),
                       attention_head_dim=options.get("head_channels", 32))
