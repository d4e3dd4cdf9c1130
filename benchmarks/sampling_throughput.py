"""Sampling throughput: denoisekit's ``sample()`` vs a diffusers pipeline loop, same network, same NFE.

Both loops drive one network, so the difference is the sampling machinery alone: grid, noise,
per-step arithmetic, the adapter between network and sampler. The network (``--network``):

- ``ours``: denoisekit's U-Net in the layout of ``configs/digits-demo.yaml`` (unconditional), read
  as an epsilon-prediction model of DDPM's discrete process (1000 linear-beta steps), its time
  input the step index; diffusers' loop calls it through a 3-line shim returning ``.sample``;
- ``diffusers``: ``UNet2DModel`` of the same layout and size; denoisekit calls it through its
  ``Denoiser`` adapter (``prediction="eps"``, the step index as time) and a lambda taking ``.sample``.

Loops (``torch.no_grad``, float32, batch of 1 x S x S images, one ``torch.Generator``):

- denoisekit: ``sample(denoiser, shape, sampler=..., nfe=..., generator=g)`` (default log-SNR grid);
- diffusers: what ``DDIMPipeline.__call__`` does, without the image conversion: ``randn *
  init_noise_sigma``, ``set_timesteps(nfe)``, then ``scheduler.step(unet(x, t).sample, t, x)`` per
  timestep (``DDIMScheduler`` eta 0, ``DPMSolverMultistepScheduler`` (DPM-Solver++ 2M, its default));
- network only: ``nfe`` forward passes at the same batch: the floor both loops sit on.

Pairs: DDIM vs ``sample_ddim`` and DPM-Solver++(2M) vs ``sample_dpmpp_2m`` at ``--nfe`` (10, 50)
evaluations and batches ``--batch`` (64, 256). Every configuration runs once per round, rounds are
repeated ``--repeats`` times (after a warm-up round) so machine load falls on all alike; the median
wall time gives images/s and the ratio denoisekit / diffusers (by process CPU time in brackets);
"overhead" is a loop's median time above the network-only median, per step.

    python benchmarks/sampling_throughput.py                 # rewrites its RESULTS.md section
    python benchmarks/sampling_throughput.py --quick --no-write
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
import yaml
from torch import Tensor, nn

from _common import diffusers_unet, write_section  # benchmarks/ is the script's folder

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Sampling throughput"
PAIRS = {"ddim": ("DDIMScheduler", "ddim"), "dpmpp_2m": ("DPMSolverMultistepScheduler", "dpmpp_2m")}


def model_options(config: Path) -> tuple[dict[str, Any], int]:
    raw = yaml.safe_load(config.read_text())
    opts = dict(raw["model"])
    opts.pop("name", None)
    opts.pop("num_classes", None)
    return opts, int(raw.get("data", {}).get("size", 8))


class DiffusersShim(nn.Module):
    """Our network behind diffusers' U-Net call convention: ``unet(x, t).sample`` with a scalar ``t``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, t: Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=self.net(x, t.to(x.dtype).expand(x.shape[0])))


def build(network: str, config: Path) -> tuple[Callable[[Tensor, Tensor], Tensor], Any, str, int]:
    """(eps network ``net(x, t_index)`` for denoisekit, the same behind diffusers' convention, description, size)."""
    from denoisekit.models.unet import UNet

    opts, size = model_options(config)
    torch.manual_seed(0)
    if network == "ours":
        net = UNet(**opts).eval()
        n = sum(p.numel() for p in net.parameters())
        return net, DiffusersShim(net), f"denoisekit UNet ({n / 1e6:.2f}M params)", size
    unet = diffusers_unet(opts, size, opts["channels"]).eval()
    n = sum(p.numel() for p in unet.parameters())
    return (lambda x, t: unet(x, t).sample), unet, f"diffusers UNet2DModel ({n / 1e6:.2f}M params)", size


def make_runs(network: str, config: Path, batches: list[int], nfes: list[int]) -> tuple[dict[tuple, Callable], str]:
    import diffusers
    from denoisekit import get_process
    from denoisekit.compat.diffusers import ddpm_config
    from denoisekit.prediction import Denoiser
    from denoisekit.samplers.run import sample

    net, unet, desc, size = build(network, config)
    process = get_process("ddpm")
    den = Denoiser(net, process, "eps")
    runs: dict[tuple, Callable] = {}

    def ours(sampler: str, nfe: int, b: int) -> Callable[[], Tensor]:
        return lambda: sample(den, (b, 1, size, size), sampler=sampler, nfe=nfe, generator=torch.Generator().manual_seed(0))

    def theirs(cls: str, nfe: int, b: int) -> Callable[[], Tensor]:
        def run() -> Tensor:
            sched = getattr(diffusers, cls)(**ddpm_config(process))
            g = torch.Generator().manual_seed(0)
            x = torch.randn((b, 1, size, size), generator=g) * sched.init_noise_sigma
            sched.set_timesteps(nfe)
            extra = {"eta": 0.0, "generator": g} if cls == "DDIMScheduler" else {"generator": g}
            for t in sched.timesteps:
                x = sched.step(unet(sched.scale_model_input(x, t), t).sample, t, x, **extra).prev_sample
            return x
        return run

    def floor(nfe: int, b: int) -> Callable[[], Tensor]:
        x, t = torch.randn(b, 1, size, size), torch.full((b,), 500.0)
        def run() -> Tensor:
            for _ in range(nfe):
                out = net(x, t)
            return out
        return run

    for b, nfe in itertools.product(batches, nfes):
        runs[("network only", "", nfe, b)] = floor(nfe, b)
        for pair, (cls, sampler) in PAIRS.items():
            runs[("denoisekit", pair, nfe, b)] = ours(sampler, nfe, b)
            runs[("diffusers", pair, nfe, b)] = theirs(cls, nfe, b)
    return runs, desc


def measure(runs: dict[tuple, Callable], repeats: int) -> dict[tuple, dict[str, float]]:
    wall: dict[tuple, list[float]] = {k: [] for k in runs}
    cpu: dict[tuple, list[float]] = {k: [] for k in runs}
    with torch.no_grad():
        for r in range(repeats + 1):  # round 0 warms up
            for key, fn in runs.items():
                w0, c0 = time.perf_counter(), time.process_time()
                out = fn()
                w, c = time.perf_counter() - w0, time.process_time() - c0
                assert torch.isfinite(out).all(), key
                if r:
                    wall[key].append(w)
                    cpu[key].append(c)
            print(f"round {r}/{repeats} done (load {os.getloadavg()[0]:.1f})", flush=True)
    return {k: {"wall": statistics.median(wall[k]), "cpu": statistics.median(cpu[k])} for k in runs}


def markdown(res: dict[tuple, dict[str, float]], desc: str, meta: dict[str, Any]) -> list[str]:
    lines = [f"### Network: {desc}", "",
             "| sampler | NFE | batch | denoisekit img/s | diffusers img/s | ratio (CPU) | network-only img/s | "
             "overhead per step: denoisekit | diffusers |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    names = {"ddim": "DDIM (eta 0) / sample_ddim", "dpmpp_2m": "DPM-Solver++(2M) / sample_dpmpp_2m"}
    for pair in PAIRS:
        for nfe in meta["nfe"]:
            for b in meta["batch"]:
                o, d, f = res[("denoisekit", pair, nfe, b)], res[("diffusers", pair, nfe, b)], res[("network only", "", nfe, b)]
                lines.append(
                    f"| {names[pair]} | {nfe} | {b} | {b / o['wall']:.0f} | {b / d['wall']:.0f} | "
                    f"{d['wall'] / o['wall']:.2f} ({d['cpu'] / o['cpu']:.2f}) | {b / f['wall']:.0f} | "
                    f"{(o['wall'] - f['wall']) / nfe * 1e3:.1f} ms | {(d['wall'] - f['wall']) / nfe * 1e3:.1f} ms |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--network", default="ours,diffusers", help="comma-separated: ours, diffusers")
    ap.add_argument("--config", default=str(ROOT / "configs" / "digits-demo.yaml"))
    ap.add_argument("--nfe", default="10,50")
    ap.add_argument("--batch", default="64,256")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="NFE 10, batch 16, 2 repeats")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import diffusers

    nfes, batches = [int(v) for v in args.nfe.split(",")], [int(v) for v in args.batch.split(",")]
    if args.quick:
        nfes, batches, args.repeats = [10], [16], 2
    meta = dict(nfe=nfes, batch=batches)
    config = Path(args.config)
    t0, load0 = time.perf_counter(), os.getloadavg()
    body: list[str] = []
    for network in args.network.split(","):
        runs, desc = make_runs(network.strip(), config, batches, nfes)
        body += markdown(measure(runs, args.repeats), desc, meta)
    load1 = os.getloadavg()
    _, size = model_options(config)
    head = [SECTION, "",
            f"`python benchmarks/sampling_throughput.py` ({time.strftime('%Y-%m-%d')}; torch {torch.__version__}, "
            f"diffusers {diffusers.__version__}, {platform.machine()} CPU, {args.threads} threads; "
            f"{time.perf_counter() - t0:.0f} s; 1-minute load average {load0[0]:.1f} at start, {load1[0]:.1f} at end). "
            f"Unconditional 1x{size}x{size} images from an epsilon-prediction network on DDPM's 1000-step process "
            f"(the layout of `{os.path.relpath(config.resolve(), ROOT)}`, random weights: speed does not depend on them). "
            f"Both loops drive the same network; median of {args.repeats} interleaved rounds. Ratio = denoisekit img/s "
            f"/ diffusers img/s by wall time (by process CPU time in brackets). Overhead per step = (loop time - "
            f"NFE network calls alone) / NFE.", ""]
    text = "\n".join(head + body).rstrip() + "\n"
    print(text)
    if not args.no_write:
        write_section(text, SECTION)


if __name__ == "__main__":
    main()
