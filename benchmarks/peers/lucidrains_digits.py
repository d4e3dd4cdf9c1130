"""Train and sample lucidrains' ``denoising-diffusion-pytorch`` on digits for a time budget (a peer of
``benchmarks/quality.py``, run in its own virtual environment: the package needs torchvision).

Used the way its README teaches: ``Unet`` + ``GaussianDiffusion`` with the package's defaults
(1000 steps, sigmoid beta schedule, v-prediction, DDIM sampling when ``sampling_timesteps`` <
``timesteps``), trained with the optimisation recipe of its ``Trainer``: Adam (lr 1e-4, betas (0.9,
0.99)), gradient-norm clipping at 1, ``ema_pytorch.EMA`` (beta 0.995, updated every 10 steps) whose
model samples. The loop is the ``Trainer``'s own loop written out, because the ``Trainer`` reads
images from a folder of files and runs a fixed number of steps (here: until the budget is spent);
the data are the same tensors the other libraries get, mapped to [0, 1] as the package expects
(``auto_normalize`` maps them back to [-1, 1]). No horizontal flips (digits are not symmetric).

    .venv-peers/bin/python benchmarks/peers/lucidrains_digits.py --data digits.npz --seconds 300 \
        --out samples.npz --result result.json

Writes ``--out`` (``images`` uint8 (N, H, W, 1)) and ``--result`` (JSON: steps, images seen, train and
sampling wall/CPU seconds, parameters, versions).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch


def _clock(kind: str, threads: int) -> float:
    return time.perf_counter() if kind == "wall" else time.process_time() / threads


def build(dim: int, size: int, sampling_steps: int):
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet

    model = Unet(dim=dim, dim_mults=(1, 2, 2), channels=1)
    return GaussianDiffusion(model, image_size=size, timesteps=1000, sampling_timesteps=sampling_steps)


def pick_dim(target: int, size: int) -> int:
    """The base width (a multiple of the U-Net's 8 GroupNorm groups) whose parameter count is nearest ``target``."""
    best = None
    for dim in range(8, 129, 8):
        n = sum(p.numel() for p in build(dim, size, 50).model.parameters())
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (dim, n)
    return best[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help=".npz with 'images' float32 (N, 1, H, W) in [-1, 1]")
    ap.add_argument("--seconds", type=float, required=True, help="training budget")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-4, help="the Trainer's default train_lr")
    ap.add_argument("--dim", type=int, default=0, help="Unet base width (0: nearest --target-params)")
    ap.add_argument("--target-params", type=int, default=1_200_000)
    ap.add_argument("--sampling-steps", type=int, default=50)
    ap.add_argument("--n-samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--result", required=True)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    from ema_pytorch import EMA
    from importlib.metadata import version

    with np.load(args.data) as f:
        data = torch.from_numpy(f["images"]).float()
    data = (data + 1) / 2  # the package's convention: [0, 1] in, normalised to [-1, 1] inside
    n, _, size, _ = data.shape
    dim = args.dim or pick_dim(args.target_params, size)

    torch.manual_seed(args.seed)
    diffusion = build(dim, size, args.sampling_steps)
    params = sum(p.numel() for p in diffusion.model.parameters())
    opt = torch.optim.Adam(diffusion.parameters(), lr=args.lr, betas=(0.9, 0.99))
    ema = EMA(diffusion, beta=0.995, update_every=10)
    gen = torch.Generator().manual_seed(args.seed)
    order, pos = torch.randperm(n, generator=gen), 0

    steps, load0 = 0, os.getloadavg()
    w0, c0 = time.perf_counter(), time.process_time()
    start = _clock(args.clock, args.threads)
    diffusion.train()
    while _clock(args.clock, args.threads) - start < args.seconds:
        if pos + args.batch > n:  # an endless stream of shuffled epochs
            order, pos = torch.cat([order[pos:], torch.randperm(n, generator=gen)]), 0
        batch = data[order[pos:pos + args.batch]]
        pos += args.batch
        loss = diffusion(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        ema.update()
        steps += 1
    train_wall, train_cpu = time.perf_counter() - w0, time.process_time() - c0
    load1 = os.getloadavg()
    final_loss = float(loss.detach())

    torch.manual_seed(args.seed + 1)
    sampler = ema.ema_model.eval()
    w0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        x = sampler.sample(batch_size=args.n_samples)  # (N, 1, H, W) in [0, 1]
    sample_wall, sample_cpu = time.perf_counter() - w0, time.process_time() - c0
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.savez_compressed(args.out, images=images)
    result = dict(library=f"denoising-diffusion-pytorch {version('denoising-diffusion-pytorch')}",
                  torch=torch.__version__, params=params, dim=dim, steps=steps, images_seen=steps * args.batch,
                  batch=args.batch, lr=args.lr, train_wall=train_wall, train_cpu=train_cpu,
                  load_before=load0, load_after=load1, final_loss=final_loss,
                  sampler=f"DDIM (GaussianDiffusion.ddim_sample, eta 0), {args.sampling_steps} steps",
                  nfe=args.sampling_steps, sample_wall=sample_wall, sample_cpu=sample_cpu)
    with open(args.result, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
