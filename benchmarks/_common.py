"""What the benchmark scripts share: their section of RESULTS.md, and diffusers' U-Net in our layout."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
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


# --- training a preset for a CPU budget, and sampling a run (latent.py, zoo.py, palette.py) -------------------

def cpu_seconds_per_call(step: Callable[[], Any], n: int = 8, warmup: int = 2) -> float:
    """Process CPU time / threads per call of ``step()`` (after ``warmup`` calls): on a shared machine it counts
    the work done, not the time spent waiting for a core."""
    import time

    import torch

    for _ in range(warmup):
        step()
    t0 = time.process_time()
    for _ in range(n):
        step()
    return (time.process_time() - t0) / n / torch.get_num_threads()


def steps_for(config: Any, seconds: float, probe_dir: Path, minimum: int = 20) -> int:
    """Training steps of a diffusion ``config`` that fit in ``seconds`` of CPU time / threads (timed probe)."""
    from denoisekit.train.config import config_from_dict, config_to_dict
    from denoisekit.train.trainer import Trainer

    d = config_to_dict(config)
    d["train"].update(steps=10**6, save_every=0)
    d["sample"]["n"] = 0
    trainer = Trainer(config_from_dict(d), probe_dir, progress=False)
    return max(minimum, int(seconds / cpu_seconds_per_call(trainer.train_step)))


def with_steps(config: Any, steps: int) -> Any:
    """``config`` trained for ``steps`` (warm-up capped at a tenth of the run, one checkpoint at the end)."""
    from denoisekit.train.config import config_from_dict, config_to_dict

    d = config_to_dict(config)
    d["train"].update(steps=steps, save_every=0)
    d["optim"]["warmup_steps"] = min(d["optim"]["warmup_steps"], steps // 10)
    return config_from_dict(d)


def train_diffusion(config: Any, out: Path, seconds: float) -> dict[str, Any]:
    """Train ``config`` into ``out`` for about ``seconds`` of CPU time unless a run is there already; returns
    ``steps``, ``seconds_per_step`` (the probe's, CPU) and ``train_cpu_s`` (measured; None for a reused run)."""
    import json
    import tempfile
    import time

    import torch

    from denoisekit.engine.checkpoint import latest_checkpoint
    from denoisekit.train.trainer import train_from_config
    from denoisekit.train.run import load_run

    meta = out / "budget.json"
    if latest_checkpoint(out / "checkpoints") is not None:  # trained before: reuse
        if meta.is_file():
            return json.loads(meta.read_text())
        return {"steps": load_run(out)[1].train.steps, "train_cpu_s": None, "batch": config.train.batch_size,
                "budget_s": seconds, "seconds_per_step": None}
    with tempfile.TemporaryDirectory() as probe:
        steps = steps_for(config, seconds, Path(probe) / "p")
    t0 = time.process_time()
    train_from_config(with_steps(config, steps), out, progress=False)
    info = {"steps": steps, "train_cpu_s": (time.process_time() - t0) / torch.get_num_threads(),
            "batch": config.train.batch_size, "budget_s": seconds}
    info["seconds_per_step"] = info["train_cpu_s"] / steps
    meta.write_text(json.dumps(info, indent=1) + "\n")
    return info


class RunSampler:
    """A trained run loaded once (:func:`~denoisekit.train.run.load_model`: denoiser, and the decoder of a latent run)
    to draw unconditional images with :func:`~denoisekit.generation.generate`."""

    def __init__(self, run: Path) -> None:
        from denoisekit.train.run import load_model

        self.model = load_model(run)
        self.config, self.shape = self.model.config, self.model.image_shape

    def __call__(self, n: int, *, nfe: int, seed: int = 0, batch: int = 100, sampler: str = "dpmpp_2m",
                 schedule: str | None = None) -> Any:
        """``n`` images ``(n, C, H, W)`` in [-1, 1] (decoded for a latent run), unguided, on ``schedule`` (default: the
        run's ``sample.schedule``); sample ``i`` draws from generator ``seed + i`` whatever the batch."""
        import torch

        from denoisekit.generation import Guidance, generate

        with torch.no_grad():
            x = generate(self.model, n, sampler=sampler, nfe=nfe, schedule=schedule, guidance=Guidance(), seed=seed,
                         batch_size=batch)
        return x.clamp(-1, 1)

    def rate(self, n: int, *, nfe: int, rounds: int = 1) -> float:
        """Images/s of drawing ``n`` images in one batch (decoding included, loading not), best of ``rounds``."""
        import time

        best = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            self(n, nfe=nfe, seed=10_000, batch=n)
            best = min(best, time.perf_counter() - t0)
        return n / best


def generate(run: Path, n: int, *, nfe: int, seed: int = 0, batch: int = 100) -> Any:
    """``n`` unconditional images of a trained run (:class:`RunSampler`, loaded for this call)."""
    return RunSampler(run)(n, nfe=nfe, seed=seed, batch=batch)


def shapes_renders(n: int, seed: int, size: int, max_shapes: int) -> Any:
    """``n`` shapes renders ``(n, 3, size, size)`` in [-1, 1] of 1..``max_shapes`` shapes from ``seed`` (held-out
    sets: the training data use other seeds)."""
    import torch

    from denoisekit.data.transforms import uint8_to_tensor
    from denoisekit.eval.alignment import rendered_shapes

    images, _ = rendered_shapes(n, seed, size, max_shapes=max_shapes)
    return torch.stack([uint8_to_tensor(im) for im in images])
