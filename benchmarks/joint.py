"""Joint denoising on class-conditional digits: seams, coherence, per-crop FID/KID and class, regions, anagrams.

The model: ``configs/digits-demo.yaml`` at 1000 steps (8x8 digits, the tutorial's; trained here into
``runs/joint/digits`` when missing, or ``--run``); beside it the exact denoiser of a Gaussian mixture of smooth
images whose content reaches the window's edges (:class:`Oracle`). 64 canvases of 8x64 (eight windows' width,
so 512 crops) with one class each (canvas ``i`` has class ``i mod 10``), 20 DDIM steps at the run's guidance,
the same seeds for every case:

- **naive tiling**: windows every 8 px (stride = window): eight independent images side by side;
- **MultiDiffusion** (Bar-Tal et al. 2023) windows every 4 px (and 2 px), averaging what SyncTweedies (Kim et al. 2024)
  calls the cases: ``x0`` (Tweedie's estimate), ``eps`` (the noise estimate) and ``xt`` (each window's next
  state), deterministic (DDIM eta 0: all three are one update for these pixel-map views) and stochastic
  (eta 1: averaging x_t averages the windows' independent noises);
- **SyncDiffusion** (Lee et al. 2023): MultiDiffusion x0 plus the coherence gradient (w = 1) toward window 0
  through the digits feature network (the paper's LPIPS);
- **loop**: MultiDiffusion closed round its width.

Scores: *seam* = squared horizontal differences across the naive tiles' borders (columns 8k-1 | 8k) over
those across the other columns (1: no seam where tiles would meet); *wrap* = the same across the canvas's
right-to-left wrap border (a loop panorama's seam); *coherence* = mean squared distance between the digits
network's features of the eight non-overlapping 8x8 crops (the Intra-LPIPS analogue: lower is more alike);
*class* = the fraction of crops the digits classifier reads as the canvas's class (per-crop alignment);
*FID* / *KID* (x 1e3) = the non-overlapping 8x8 crops against the digits data in the digits classifier's
feature space (:func:`denoisekit.eval.report.evaluate`, with its real-vs-real floor: held-out digits against
the same reference half); *s / canvas* = wall time. *Region prompts* (MultiDiffusion Sec. 3.2): the canvas's
left half has class ``a``, its right half ``(a + 5) mod 10`` (hard masks); *left* / *right* = the fraction of
each region's crops read as its class, *seam* = across the regions' border. Anagrams (Geng et al. 2024):
``--pairs`` pairs of classes ``(a, b)`` with the rot180 or flip view; *both* = the fraction read as ``a`` as is
and as ``b`` through the view.

    python benchmarks/joint.py                 # rewrites its RESULTS.md section
    python benchmarks/joint.py --quick --no-write
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import torch

from _common import write_section  # benchmarks/ is the script's folder

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Joint denoising (panoramas, anagrams)"
RUN = ROOT / "runs" / "joint" / "digits"
WIDTH, NFE = 64, 20


def ensure_run(run: Path) -> None:
    from denoisekit.engine.checkpoint import latest_checkpoint
    from denoisekit.train.trainer import train_from_config

    if latest_checkpoint(run / "checkpoints") is None:
        print(f"training {run} ...", flush=True)
        train_from_config(ROOT / "configs" / "digits-demo.yaml", run, overrides=["train.steps=1000"], progress=False)


def crops(x: torch.Tensor, w: int = 8) -> torch.Tensor:
    """``(K, B, C, H, w)``: the canvas's non-overlapping crops, left to right."""
    return torch.stack(list(x.split(w, dim=3)))


def scores(x: torch.Tensor, labels: torch.Tensor | None, net: Any) -> dict[str, float]:
    """The case's scores (module docstring); ``net`` None: pooled pixels as features and no class."""
    from denoisekit.pipelines.joint import pixel_features, seam_ratio

    k = x.shape[3] // 8
    c = crops(x.clamp(-1, 1))
    with torch.no_grad():
        f = (pixel_features if net is None else net.features)(c.flatten(0, 1)).unflatten(0, (k, len(x)))
        pred = None if net is None else net.predict(c.flatten(0, 1)).view(k, len(x))
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    coherence = torch.stack([(f[i] - f[j]).pow(2).sum(-1) for i, j in pairs]).mean()
    borders = [8 * i - 1 for i in range(1, k)]
    return {"seam": seam_ratio(x, borders), "wrap": seam_ratio(x, [x.shape[3] - 1]),
            "coherence": float(coherence), "class": float("nan") if pred is None else float((pred == labels).float().mean())}


def crop_quality(x: torch.Tensor, crop_labels: torch.Tensor, net: Any) -> dict[str, Any]:
    """Per-crop FID / KID (and the real-vs-real floor) of the canvases' non-overlapping 8x8 crops against the
    digits data, in the digits network's feature space (:func:`denoisekit.eval.report.evaluate`);
    ``crop_labels`` ``(K * B,)``: each crop's intended class, in :func:`crops` order."""
    from denoisekit.eval.report import evaluate

    import warnings

    c = crops(x.clamp(-1, 1)).flatten(0, 1)
    with warnings.catch_warnings():  # "resized to 16x16": both sets alike, said in the section's text
        warnings.simplefilter("ignore", UserWarning)
        return evaluate(c, ref="digits", labels=crop_labels, features=net)


def fid_cells(q: dict[str, Any]) -> str:
    return f"{q['fid']:.2f} | {1000 * q['kid']:.1f} |"


class Oracle:
    """The exact denoiser of a Gaussian mixture of smooth 8x8 images whose content reaches the edges (the
    tests' model): where naive tiles meet, their content does not continue, so seams are visible."""

    def __init__(self) -> None:
        import torch.nn.functional as F

        from denoisekit.oracle import GaussianMixture
        from denoisekit.process import get_process

        g = torch.Generator().manual_seed(0)
        coarse = torch.rand(6, 1, 3, 3, generator=g, dtype=torch.float64) * 1.6 - 0.8
        means = F.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=True).flatten(1)
        self.gm = GaussianMixture(means, (torch.eye(64, dtype=torch.float64) * 0.03 ** 2).expand(6, -1, -1).clone())
        self.process = get_process("ve")

    def __call__(self, y: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        return self.gm.denoise(y, sigma)


def panorama_rows(model: Any, net: Any, n: int, nfe: int, labels: torch.Tensor | None,
                  floor: dict[str, Any] | None = None) -> list[str]:
    """One table row per case; with ``net`` also per-crop FID / KID (the floor of the last goes in ``floor``)."""
    from denoisekit.pipelines.joint import Term, joint_sample
    from denoisekit.pipelines.views import windows

    def terms(stride: int, loop: bool = False) -> list[Any]:
        return [Term(v) for v in windows((8, WIDTH), (8, 8), stride, loop=loop)]

    feats = None if net is None else net.features
    if feats is None:
        from denoisekit.pipelines.joint import pixel_features as feats
    ddim0, ddim1 = {"sampler": "ddim"}, {"sampler": "ddim", "sampler_options": {"eta": 1.0}}
    cases = [
        ("naive tiling (stride 8)", terms(8), {"average": "x0", **ddim0}),
        ("MultiDiffusion x0 (stride 4)", terms(4), {"average": "x0", **ddim0}),
        ("MultiDiffusion x0 (stride 2)", terms(2), {"average": "x0", **ddim0}),
        ("MultiDiffusion eps", terms(4), {"average": "eps", **ddim0}),
        ("MultiDiffusion xt (DDIM eta 0)", terms(4), {"average": "xt", "eta": 0.0}),
        ("MultiDiffusion x0, DDIM eta 1", terms(4), {"average": "x0", **ddim1}),
        ("MultiDiffusion xt, DDIM eta 1", terms(4), {"average": "xt", "eta": 1.0}),
        ("SyncDiffusion (w 1)", terms(4), {"average": "x0", "sync_scale": 1.0, "features": feats, **ddim0}),
        ("MultiDiffusion x0, loop", terms(4, loop=True), {"average": "x0", **ddim0}),
    ]
    rows = []
    for name, case_terms, options in cases:
        t0 = time.perf_counter()
        x = joint_sample(model, case_terms, n, cond=labels, nfe=nfe, seed=0, **options)
        seconds = (time.perf_counter() - t0) / n
        s = scores(x.cpu(), labels, net)
        quality = ""
        if net is not None:
            q = crop_quality(x.cpu(), labels.repeat(WIDTH // 8), net)
            quality = " " + fid_cells(q)
            if floor is not None:
                floor.update(q["floor"], n_compared=q["n_compared"], n_ref_kept=q["n_ref_kept"])
        rows.append(f"| {name} | {len(case_terms)} | {s['seam']:.2f} | {s['wrap']:.2f} | {s['coherence']:.2f} |"
                    f"{quality} {s['class']:.2f} | {seconds:.3f} |".replace("| nan |", "| |"))
        print(rows[-1], flush=True)
    return rows


def region_rows(model: Any, net: Any, n: int, nfe: int) -> list[str]:
    """Region prompts (MultiDiffusion Sec. 3.2): the canvas's left half has class ``a``, its right half
    ``b = (a + 5) mod 10``, ``ceil(n / 10)`` canvases for each ``a`` in 0..9; *left* / *right* = the fraction
    of each half's crops read as its class."""
    from denoisekit.pipelines.joint import joint_sample, region_terms, seam_ratio
    from denoisekit.pipelines.views import windows

    half, k, per = WIDTH // 2, WIDTH // 8, -(-n // 10)
    masks = torch.zeros(2, 8, WIDTH)
    masks[0, :, :half], masks[1, :, half:] = 1, 1
    rows = []
    for name, stride in (("naive tiling (stride 8)", 8), ("MultiDiffusion x0 (stride 4)", 4),
                         ("MultiDiffusion x0 (stride 2)", 2)):
        xs, ys = [], []
        t0 = time.perf_counter()
        for a in range(10):
            b = (a + 5) % 10
            terms = region_terms(windows((8, WIDTH), (8, 8), stride), masks, [a, b])
            xs.append(joint_sample(model, terms, per, nfe=nfe, seed=a * per, sampler="ddim").cpu())
            ys.append(torch.tensor([a] * (k // 2) + [b] * (k - k // 2)))  # per crop, left to right
        seconds = (time.perf_counter() - t0) / (10 * per)
        x = torch.cat(xs)
        want = torch.cat([y[:, None].expand(k, per) for y in ys], dim=1)  # (K, B) like crops()
        q = crop_quality(x, want.flatten(), net)
        with torch.no_grad():
            pred = net.predict(crops(x.clamp(-1, 1)).flatten(0, 1)).view(k, len(x))
        ok = pred == want
        left, right = float(ok[:k // 2].float().mean()), float(ok[k // 2:].float().mean())
        rows.append(f"| {name} | {len(terms)} | {seam_ratio(x, [half - 1]):.2f} | {fid_cells(q)} {left:.2f} | "
                    f"{right:.2f} | {seconds:.3f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=str(RUN), help="a class-conditional 8x8 digits run (trained when missing)")
    ap.add_argument("--n", type=int, default=64, help="canvases per case (default 64: 512 crops for FID / KID)")
    ap.add_argument("--pairs", type=int, default=20, help="anagram class pairs drawn (default 20)")
    ap.add_argument("--quick", action="store_true", help="4 canvases, 6 steps: a smoke test")
    ap.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from denoisekit.eval.features import digits_feature_network
    from denoisekit.pipelines.joint import Term, anagram_terms, joint_sample
    from denoisekit.pipelines.views import anagram_view
    from denoisekit.train.run import load_model

    run = Path(args.run)
    if run == RUN:
        ensure_run(run)
    model = load_model(run)
    net = digits_feature_network().eval()
    net.requires_grad_(False)
    n, nfe = (4, 6) if args.quick else (args.n, NFE)
    labels = torch.arange(n) % 10
    win = (8, 8)
    floor: dict[str, Any] = {}
    rows = panorama_rows(model, net, n, nfe, labels, floor)
    region = region_rows(model, net, n, nfe)
    from denoisekit.generation import LoadedModel

    oracle_rows = panorama_rows(LoadedModel(Oracle(), image_shape=(1, 8, 8)), None, n, nfe, None)
    # anagrams: class pairs (a, b), read as a as is and as b through the view
    g = torch.Generator().manual_seed(0)
    pairs = [(int(a), int(b)) for a, b in torch.randint(0, 10, (4 if args.quick else args.pairs, 2), generator=g) if a != b] or [(6, 9)]
    ana = []
    for view in ("rot180", "flip"):
        v = anagram_view(view, win)
        both = base = 0.0
        t0 = time.perf_counter()
        for i, (a, b) in enumerate(pairs):
            x = joint_sample(model, anagram_terms([anagram_view("identity", win), v], [a, b]), 1, nfe=nfe,
                             sampler="ddim", seed=i).clamp(-1, 1)
            plain = joint_sample(model, [Term(anagram_view("identity", win), a)], 1, nfe=nfe, sampler="ddim", seed=i)
            both += float(int(net.predict(x)[0]) == a and int(net.predict(v.project(x))[0]) == b)
            base += float(int(net.predict(plain.clamp(-1, 1))[0]) == a
                          and int(net.predict(v.project(plain.clamp(-1, 1)))[0]) == b)
        seconds = (time.perf_counter() - t0) / len(pairs)
        ana.append(f"| {view} | {len(pairs)} | {both / len(pairs):.2f} | {base / len(pairs):.2f} | {seconds:.2f} |")
        print(ana[-1], flush=True)
    text = "\n".join([
        SECTION, "",
        f"`python benchmarks/joint.py` ({platform.machine()}, {torch.get_num_threads()} threads; {n} canvases of "
        f"8x{WIDTH} per case from the 8x8 digits demo run, {nfe} DDIM steps at its guidance; see the script's "
        f"docstring for the scores). seam: tile-border over interior gradient energy (1 = no seam); wrap: the "
        f"right-to-left border; coherence: mean squared feature distance between the eight crops; class: crops "
        f"read as the canvas's class. FID / KID (x 1e3): the {n * WIDTH // 8} non-overlapping 8x8 crops against "
        f"the digits data in the digits classifier's feature space (`denoisekit.eval.report.evaluate`; the "
        f"network reads 16x16, so crops and digits alike are upsampled); the real-vs-real floor "
        f"({floor.get('n_compared')} held-out digits against the same {floor.get('n_ref_kept')} reference digits) "
        f"is FID {floor.get('fid', float('nan')):.2f}, KID {1000 * floor.get('kid', float('nan')):.1f} (KID is "
        f"unbiased: 0 within its noise).", "",
        "| case | windows | seam | wrap | coherence | FID | KID | class | s / canvas |",
        "|---|---|---|---|---|---|---|---|---|", *rows, "",
        f"Region prompts (MultiDiffusion Sec. 3.2): the left half of each 8x{WIDTH} canvas has class a, the right "
        f"half (a + 5) mod 10 (hard masks; {-(-n // 10)} canvases per a); seam: the gradient energy across the "
        f"regions' border; left / right: the fraction of each region's crops the digits classifier reads as "
        f"that region's class; FID / KID of all the crops as above:", "",
        "| case | windows | seam | FID | KID | left | right | s / canvas |", "|---|---|---|---|---|---|---|---|",
        *region, "",
        "The same cases on the exact denoiser of a Gaussian mixture of smooth 8x8 images whose content reaches "
        "the edges (the tests' oracle; features: 4x4-pooled pixels). Digits have a black border, so naive tiles "
        "meet on background (seam well below 1) and each tile is a whole digit (class 1, coherent); "
        "MultiDiffusion's windows see only 8 px of a 64 px canvas, so its crops are fragments of strokes. With "
        "content that reaches the edges the seams of naive tiling show, and averaging cuts them, the more the "
        "windows overlap (at stride 4 the tile borders are window edges too); a loop's wrap border is one more "
        "window edge (compare its wrap with its seam; open canvases' wrap is a seam):", "",
        "| case | windows | seam | wrap | coherence | class | s / canvas |", "|---|---|---|---|---|---|---|",
        *oracle_rows, "",
        "Anagrams (the class pair read as is and through the view; baseline: a plain sample of the first class "
        "that happens to read as the second through the view):", "",
        "| view | pairs | both read | baseline | s / image |", "|---|---|---|---|---|", *ana,
    ])
    print(text)
    if not args.no_write and not args.quick:
        write_section(text, SECTION)


if __name__ == "__main__":
    main()
