"""Joint denoising (MultiDiffusion, SyncDiffusion, SyncTweedies' averages, visual anagrams) on an exact
Gaussian-mixture denoiser over 8x8 pixel windows: the claims that are identities are checked bit for bit or
to float64 rounding, the statistical ones against a control."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from denoisekit._utils import randn, seeded_generators
from denoisekit.generation import LoadedModel, generate, sampling_grid
from denoisekit.oracle import GaussianMixture
from denoisekit.pipelines.joint import (JointDenoiser, Term, anagram_terms, border_energy, joint_sample,
                                        region_terms, seam_ratio)
from denoisekit.pipelines.views import ANAGRAM_VIEWS, View, anagram_view, check_coverage, check_invertible, \
    window_offsets, windows
from denoisekit.process import get_process

H = W = 8


def _smooth_means(k: int, seed: int) -> torch.Tensor:
    """``k`` smooth 8x8 images (a random 3x3 grid upsampled): mixture means with structure across a window."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(k, 1, 3, 3, generator=g, dtype=torch.float64) * 1.6 - 0.8
    return F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=True).flatten(1)


class Oracle:
    """The exact denoiser of a Gaussian mixture over (1, 8, 8) images; a label picks a component (class)."""

    process = get_process("ve")

    def __init__(self, gm: GaussianMixture):
        self.gm = gm

    def __call__(self, y, sigma, cond=None):
        labels = cond.get("labels") if isinstance(cond, dict) else cond
        return self.gm.denoise(y, sigma) if labels is None else self.gm.denoise_class(y, sigma, labels)


def _model(gm: GaussianMixture) -> LoadedModel:
    return LoadedModel(Oracle(gm), image_shape=(1, H, W), num_classes=gm.components)


@pytest.fixture(scope="module")
def smooth():
    means = _smooth_means(6, 0)
    covs = torch.eye(H * W, dtype=torch.float64).expand(6, -1, -1) * 0.03 ** 2
    return _model(GaussianMixture(means, covs.clone()))


def _prior(model, shape, seed=0, nfe=None):
    grid = sampling_grid(model, sampler="dpmpp_2m", nfe=nfe or model.defaults.nfe, schedule="auto")
    return randn(shape, seeded_generators(seed, shape[0])) * float(model.process.prior_std(grid[0]))


# ------------------------------------------------------------------------------------------------ views

def test_views_are_invertible_and_round_trip():
    x = torch.randn(2, 3, H, W)
    for name in ANAGRAM_VIEWS:
        v = check_invertible(anagram_view(name, (H, W), patch=4))
        assert torch.equal(v.unproject(v.project(x)), x), name  # the inverse is the adjoint
    flip = anagram_view("flip", (H, W))
    assert torch.equal(flip.project(x), x.flip(2)) and torch.equal(flip.project(flip.project(x)), x)
    assert torch.equal(anagram_view("rot180", (H, W)).project(x), x.flip(2).flip(3))
    rot = anagram_view("rot90", (H, W))
    y = x
    for _ in range(4):
        y = rot.project(y)
    assert torch.equal(y, x) and not torch.equal(rot.project(x), x)
    assert torch.equal(anagram_view("negate", (H, W)).project(x), -x)
    patch = anagram_view("patch", (H, W), patch=4)
    assert not torch.equal(patch.project(x), x) and sorted(patch.index.tolist()) == list(range(H * W))
    with pytest.raises(ValueError, match="is not invertible"):
        check_invertible(windows((H, 2 * W), (H, W), W)[0])
    with pytest.raises(ValueError, match="is not invertible: 1 canvas pixels are never read"):
        check_invertible(View("dup", torch.tensor([0, 0, 2, 3]), (2, 2), (2, 2)))
    with pytest.raises(ValueError, match="square canvas"):
        anagram_view("rot90", (H, 2 * W))
    with pytest.raises(ValueError, match="must divide"):
        anagram_view("patch", (H, W), patch=3)
    with pytest.raises(ValueError, match="allowed"):
        anagram_view("swirl", (H, W))  # type: ignore[arg-type]


def test_windows_cover_the_canvas_and_wrap_round_a_loop():
    assert window_offsets(32, 8, 6) == [0, 6, 12, 18, 24]  # the last flush with the end
    assert window_offsets(30, 8, 8) == [0, 8, 16, 22]
    views = windows((H, 30), (H, W), 6, loop=True)
    assert [int(v.name.split(",")[1][:-1]) for v in views] == [0, 6, 12, 18, 24]
    cover = check_coverage(views)
    assert bool((cover > 0).all()) and torch.unique(cover[0]).tolist() != [1.0]
    last = views[-1].project(torch.arange(H * 30.0).view(1, 1, H, 30))
    assert last[0, 0, 0].tolist() == [24, 25, 26, 27, 28, 29, 0, 1]  # wraps to the left edge
    # every column covered the same number of times when the stride divides the window: no special seam
    uniform = check_coverage(windows((H, 32), (H, W), 4, loop=True))
    assert torch.equal(uniform, torch.full((H, 32), 2.0, dtype=torch.float64))
    for args, message in [(((H, 4), (H, W), 4), "smaller than the model's window"),
                          (((H, 32), (H, W), 9), "stride 9 must be in"),
                          (((H, 30), (H, W), 4), "needs a stride that divides it")]:
        with pytest.raises(ValueError, match=message):
            windows(*args, loop=True)
    with pytest.raises(ValueError, match="uncovered"):
        check_coverage([windows((H, 32), (H, W), 8)[0]])


# ------------------------------------------------------------------------------------ exact identities

def test_one_full_canvas_view_is_plain_sampling_bit_for_bit(smooth):
    terms = [Term(windows((H, W), (H, W), W)[0])]
    for average in ("x0", "eps"):
        joint = joint_sample(smooth, terms, 3, average=average, seed=5)
        plain = generate(smooth, 3, seed=5)
        if average == "x0":
            assert torch.equal(joint, plain)
        else:  # y - sigma (y - x0) / sigma: one rounding per step
            assert torch.allclose(joint, plain, atol=1e-4)


def test_stride_equal_to_window_reproduces_independent_tiles_exactly(smooth):
    views = windows((H, 4 * W), (H, W), W)
    assert len(views) == 4
    canvas = joint_sample(smooth, [Term(v) for v in views], 1, sampler="heun", nfe=9, seed=3)
    noise = _prior(smooth, (1, 1, H, 4 * W), seed=3)
    tiles = noise.unflatten(3, (4, W)).permute(3, 0, 1, 2, 4)[:, 0]  # (4, 1, 8, 8), left to right
    grid = sampling_grid(smooth, sampler="heun", nfe=9, schedule="auto")
    alone = generate(smooth, 4, sampler="heun", nfe=9, x_init=tiles, sigma_start=float(grid[0]))
    assert torch.equal(canvas, torch.cat(list(alone), 2)[None])


def test_x0_eps_and_deterministic_xt_averages_are_one_canvas(smooth):
    """SyncTweedies: for pixel-map views, averaging x0, eps or (under deterministic DDIM) x_t is one update."""
    terms = [Term(v) for v in windows((H, 20), (H, W), 3)]
    kw = dict(sampler="ddim", nfe=8, seed=1)
    x0 = joint_sample(smooth, terms, 2, average="x0", dtype=torch.float64, **kw)
    eps = joint_sample(smooth, terms, 2, average="eps", dtype=torch.float64, **kw)
    assert torch.allclose(x0, eps, atol=1e-9, rtol=0)
    x0_32 = joint_sample(smooth, terms, 2, average="x0", **kw)
    xt = joint_sample(smooth, terms, 2, average="xt", eta=0.0, nfe=8, seed=1)
    assert torch.allclose(xt, x0_32, atol=1e-4, rtol=0) and not torch.allclose(xt, x0_32[[1, 0]], atol=1e-2)
    # stochastic DDIM: averaging x_t averages independent noises, which x0 averaging does not (a different canvas)
    xt1 = joint_sample(smooth, terms, 2, average="xt", eta=1.0, nfe=8, seed=1)
    assert not torch.allclose(xt1, joint_sample(smooth, terms, 2, sampler="ddim", nfe=8, seed=1), atol=1e-2)


# ------------------------------------------------------------------------------------------ statistics

def test_loop_closure_makes_the_wrap_seam_like_the_interior(smooth):
    n, width = 12, 32
    ratios = {}
    for loop in (False, True):
        terms = [Term(v) for v in windows((H, width), (H, W), 4, loop=loop)]
        x = joint_sample(smooth, terms, n, sampler="dpmpp_2m", nfe=8)
        energy = border_energy(x)  # (W,): border j is between columns j and j + 1 (mod W)
        assert energy.shape == (width,)
        # against the interior borders of the same kind (window edges: windows start every 4 columns)
        ratios[loop] = seam_ratio(x, [width - 1], interior=range(3, width - 1, 4))
    assert ratios[False] > 3, ratios  # the two ends are sampled as separate images: a seam
    assert 0.5 < ratios[True] < 1.6, ratios  # closed: the wrap border is one more interior border


def test_multidiffusion_removes_the_seams_of_naive_tiling(smooth):
    width = 4 * W
    tiles = joint_sample(smooth, [Term(v) for v in windows((H, width), (H, W), W)], 8, nfe=8)
    md = joint_sample(smooth, [Term(v) for v in windows((H, width), (H, W), 2)], 8, nfe=8)
    borders = [W - 1, 2 * W - 1, 3 * W - 1]
    assert seam_ratio(tiles, borders) > 4 and seam_ratio(md, borders) < 2


def test_syncdiffusion_pulls_the_windows_toward_the_anchor(smooth):
    feats = lambda x: F.avg_pool2d(x, 4).flatten(1)  # noqa: E731 - a differentiable perceptual stand-in
    views = windows((H, 32), (H, W), 4)
    terms = [Term(v) for v in views]

    def distance(x):
        f = torch.stack([feats(v.project(x)) for v in views])  # (K, n, D)
        return (f[1:] - f[:1]).pow(2).sum(-1).mean().item()

    plain = joint_sample(smooth, terms, 6, nfe=8)
    synced = joint_sample(smooth, terms, 6, nfe=8, sync_scale=20.0, features=feats)  # the paper's w
    assert torch.isfinite(synced).all()
    assert distance(synced) < 0.6 * distance(plain), (distance(synced), distance(plain))
    with pytest.raises(ValueError, match="needs a feature network"):
        JointDenoiser(smooth.denoiser, terms, sync_scale=1.0)


def test_visual_anagram_reads_as_each_prompt_in_its_view():
    """Component 0 pins the top half of an image, component 1 the top half of the image upside down (each
    leaves the rest free): the flip anagram of labels (0, 1) is one of component 0 and, flipped, of 1."""
    means = _smooth_means(4, 1)
    top = torch.zeros(H, W, dtype=torch.float64)
    top[: H // 2] = 1
    var = (0.05 ** 2 * top + 0.6 ** 2 * (1 - top)).flatten()
    covs = torch.diag_embed(var).expand(4, -1, -1).clone()
    gm = GaussianMixture(means, covs)
    model = _model(gm)
    flip = anagram_view("flip", (H, W))
    terms = anagram_terms([anagram_view("identity", (H, W)), flip], [0, 1])
    x = joint_sample(model, terms, 8, nfe=12)
    plain = generate(model, 8, torch.zeros(8, dtype=torch.long), nfe=12)

    def label(images):
        return gm.class_logits(images.double(), 1e-3).argmax(1)

    assert bool((label(x) == 0).all()) and bool((label(flip.project(x)) == 1).all())
    assert not bool((label(flip.project(plain)) == 1).all())  # the control: not an anagram by chance
    with pytest.raises(ValueError, match="one view per prompt"):
        anagram_terms([flip], [0, 1])


def test_region_prompts_follow_their_masks():
    means = torch.stack([torch.full((H * W,), -0.6), torch.full((H * W,), 0.6)]).double()
    gm = GaussianMixture(means, (torch.eye(H * W, dtype=torch.float64) * 0.05 ** 2).expand(2, -1, -1).clone())
    model = _model(gm)
    masks = torch.zeros(2, H, 32)
    masks[0, :, :16], masks[1, :, 16:] = 1, 1
    terms = region_terms(windows((H, 32), (H, W), 4), masks, [0, 1])
    x = joint_sample(model, terms, 2, nfe=8)
    assert float(x[..., :12].mean()) < -0.4 and float(x[..., 20:].mean()) > 0.4
    with pytest.raises(ValueError, match="2 region masks for 3 prompts"):
        region_terms(windows((H, 32), (H, W), 4), masks, [0, 1, 0])
    with pytest.raises(ValueError, match="in no region"):
        region_terms(windows((H, 32), (H, W), 4), masks * 0, [0, 1])
