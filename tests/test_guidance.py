"""Guidance wrappers (guidance.py) against exact Gaussian-mixture oracles whose components are the classes:
classifier guidance with the exact noisy classifier is the class-conditional denoiser; CFG's scales,
rescale (Lin et al. 2023), interval (Kynkaanniemi et al. 2024), negative prompts and condition plumbing."""

import math

import pytest
import torch

from denoisekit import Denoiser, GaussianMixture, get_process
from denoisekit.condition import concat_conditions, index_condition, null_condition
from denoisekit.guidance import ClassifierFreeGuidance, ClassifierGuidance
from denoisekit.models.unet import UNet
from denoisekit.samplers import get_sampler
from denoisekit.schedules import get_sigmas_karras

K = 5


@pytest.fixture(scope="module")
def gm() -> GaussianMixture:
    return GaussianMixture.random(dim=4, components=K, seed=3)


def batch(n=6, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = 2 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    sigma = torch.logspace(-1.5, 1.2, n, dtype=torch.float64)
    labels = torch.arange(n) % K
    return y, sigma, labels


class Recorder:
    """A conditional GM denoiser (labels, or a dict with labels) that records the batches it gets."""

    def __init__(self, gm):
        self.gm, self.calls = gm, []

    def __call__(self, y, sigma, cond=None):
        self.calls.append((y.shape[0], cond))
        labels = cond.get("labels") if isinstance(cond, dict) else cond
        return self.gm.denoise_class(y, sigma, labels)


def exact_class(gm, y, sigma, labels):
    """E[x0 | y, c] from the single-component mixture of each sample's class."""
    return torch.cat([gm.component(int(c))(y[i:i + 1], sigma[i:i + 1]) for i, c in enumerate(labels)])


# ---------------------------------------------------------------------------------------------
# The oracle's class structure


def test_oracle_classes(gm):
    y, sigma, labels = batch()
    assert torch.allclose(gm.class_logits(y, sigma).logsumexp(1), torch.zeros(6, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(gm.denoise_class(y, sigma, labels), exact_class(gm, y, sigma, labels), atol=1e-12)
    assert torch.equal(gm.denoise_class(y, sigma, torch.full((6,), K)), gm(y, sigma))   # null label: the mixture
    assert torch.equal(gm.denoise_class(y, sigma), gm(y, sigma))
    with pytest.raises(ValueError, match="0..5"):
        gm.denoise_class(y, sigma, torch.full((6,), K + 1))
    with pytest.raises(ValueError, match="component index"):
        gm.component(K)


# ---------------------------------------------------------------------------------------------
# Classifier guidance


@pytest.mark.parametrize("shape", [(4,), (1, 2, 2)])
def test_classifier_guidance_exact(gm, shape):
    """Tweedie + Bayes: the unconditional denoiser plus sigma^2 grad log p(c | y) with the exact classifier is
    the denoiser of component c alone, to float64 precision (also for image-shaped inputs, under no_grad)."""
    y, sigma, labels = batch()
    guided = ClassifierGuidance(gm, gm.class_logits, 1.0)
    with torch.no_grad():
        out = guided(y.reshape(6, *shape), sigma, labels)
    assert out.shape == (6, *shape)
    torch.testing.assert_close(out.reshape(6, -1), exact_class(gm, y, sigma, labels), rtol=1e-11, atol=1e-11)
    with torch.no_grad():  # cond as a dict; the unconditional GM ignores what it is given
        out2 = guided(y, sigma, {"labels": labels})
    torch.testing.assert_close(out2, out.reshape(6, -1), rtol=0, atol=0)


def test_classifier_guidance_scale(gm):
    """The correction is linear in the scale: s = 0 is the unconditional denoiser, s = 2 doubles the step."""
    y, sigma, labels = batch()
    u, c = gm(y, sigma), exact_class(gm, y, sigma, labels)
    assert torch.equal(ClassifierGuidance(gm, gm.class_logits, 0.0)(y, sigma, labels), u)
    torch.testing.assert_close(ClassifierGuidance(gm, gm.class_logits, 2.0)(y, sigma, labels), u + 2 * (c - u),
                               rtol=1e-10, atol=1e-10)


def test_classifier_guidance_composes_with_cfg(gm):
    """With the exact classifier, sigma^2 grad log p(c | y) = x0_c - x0_u: CFG at 2 plus classifier guidance at
    1 on the conditional model is CFG at 3. Labels reach the CFG-wrapped model (conditional=True)."""
    y, sigma, labels = batch()
    den = Recorder(gm)
    both = ClassifierGuidance(ClassifierFreeGuidance(den, 2.0, K), gm.class_logits, 1.0, conditional=True)
    cfg3 = ClassifierFreeGuidance(gm.denoise_class, 3.0, K)(y, sigma, labels)
    torch.testing.assert_close(both(y, sigma, labels), cfg3, rtol=1e-10, atol=1e-10)
    assert torch.equal(den.calls[0][1][:6], labels)


def test_classifier_guidance_strips_labels(gm):
    y, sigma, labels = batch()
    den = Recorder(gm)
    concat = torch.zeros(6, 1)
    ClassifierGuidance(den, gm.class_logits, 1.0)(y, sigma, {"labels": labels, "concat": concat})
    ClassifierGuidance(den, gm.class_logits, 1.0)(y, sigma, labels)
    assert den.calls[0][1] == {"concat": concat} and den.calls[1][1] is None


def test_classifier_guidance_errors(gm):
    y, sigma, labels = batch()
    guided = ClassifierGuidance(gm, gm.class_logits, 1.0)
    for cond in (None, {"text": ["a"] * 6}):
        with pytest.raises(ValueError, match="needs class labels"):
            guided(y, sigma, cond)
    with pytest.raises(ValueError, match=r"\(6,\) class labels"):
        guided(y, sigma, labels[:3])
    with pytest.raises(ValueError, match="integer"):
        guided(y, sigma, labels.double())
    with pytest.raises(ValueError, match=r"0..4"):
        guided(y, sigma, labels + K)
    with pytest.raises(ValueError, match="logits"):
        ClassifierGuidance(gm, lambda y, s: y.sum(1), 1.0)(y, sigma, labels)
    with pytest.raises(ValueError, match="finite"):
        ClassifierGuidance(gm, gm.class_logits, math.nan)


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance: scales and cost


def test_cfg_scales_and_calls(gm):
    y, sigma, labels = batch()
    u, c = gm(y, sigma), gm.denoise_class(y, sigma, labels)
    for scale, expected, rows in ((1.0, c, [6]), (0.0, u, [6]), (3.0, u + 3 * (c - u), [12])):
        den = Recorder(gm)
        out = ClassifierFreeGuidance(den, scale, K)(y, sigma, labels)
        assert torch.equal(out, expected) if scale != 3 else torch.allclose(out, expected, atol=1e-12)
        assert [n for n, _ in den.calls] == rows  # one forward: B rows, or 2B batched
    den = Recorder(gm)
    assert torch.equal(ClassifierFreeGuidance(den, 3.0, K)(y, sigma, None), u)  # no condition: nothing to guide
    assert ClassifierFreeGuidance(den, 3.0, K).process is None
    assert ClassifierFreeGuidance(Denoiser(lambda x, t: x, get_process("edm")), 2.0, K).process.name == "edm"


def test_cfg_in_x0_is_cfg_in_eps(gm):
    """The docstring's equivalence: combining eps = (y - x0) / sigma and converting back gives the same x0."""
    y, sigma, labels = batch()
    s = sigma[:, None]
    eps_c, eps_u = (y - gm.denoise_class(y, sigma, labels)) / s, (y - gm(y, sigma)) / s
    x0 = y - s * (eps_u + 2.5 * (eps_c - eps_u))
    torch.testing.assert_close(ClassifierFreeGuidance(gm.denoise_class, 2.5, K)(y, sigma, labels), x0)


def test_cfg_with_sampler(gm):
    """A guided denoiser is just a denoiser: a multistep sampler runs it, here with an interval that skips
    the high-noise half of the grid (one B-row call there) and a per-sample batch of sigmas."""
    den = Recorder(gm)
    sigmas = get_sigmas_karras(8, 0.02, 20.0)
    cfg = ClassifierFreeGuidance(den, 2.0, K, interval=(0.0, 1.0))
    x = get_sampler("dpmpp_2m")(cfg, gm.prior_noise(6, 20.0, torch.Generator().manual_seed(0)), sigmas,
                                cond=torch.arange(6) % K)
    assert torch.isfinite(x).all()
    rows = [n for n, _ in den.calls]
    assert rows == [6 if s > 1 else 12 for s in sigmas[:-1].tolist()]


# ---------------------------------------------------------------------------------------------
# Rescale (Lin et al. 2023, Sec. 3.4)


def v_of(x0, y, sigma):
    s = sigma.reshape(-1, *[1] * (y.ndim - 1))
    return (y - (1 + s**2) * x0) / (s * torch.sqrt(1 + s**2))


def test_rescale(gm):
    y, sigma, labels = batch()
    plain = ClassifierFreeGuidance(gm.denoise_class, 4.0, K)(y, sigma, labels)
    assert torch.equal(ClassifierFreeGuidance(gm.denoise_class, 4.0, K, rescale=0.0)(y, sigma, labels), plain)
    c = gm.denoise_class(y, sigma, labels)
    full = ClassifierFreeGuidance(gm.denoise_class, 4.0, K, rescale=1.0)(y, sigma, labels)
    # phi = 1: the guided v has the conditional v's std, per sample (Lin et al. eq. 17)
    torch.testing.assert_close(v_of(full, y, sigma).std(1), v_of(c, y, sigma).std(1), rtol=1e-12, atol=0)
    assert not torch.allclose(v_of(plain, y, sigma).std(1), v_of(c, y, sigma).std(1))
    # eq. 18: phi mixes rescaled and plain; the map x0 -> v is affine, so the mix holds in x0 too
    mixed = ClassifierFreeGuidance(gm.denoise_class, 4.0, K, rescale=0.7)(y, sigma, labels)
    torch.testing.assert_close(mixed, 0.7 * full + 0.3 * plain, rtol=1e-12, atol=1e-12)
    eps = ClassifierFreeGuidance(gm.denoise_class, 4.0, K, rescale=1.0, rescale_space="eps")(y, sigma, labels)
    s = sigma[:, None]
    torch.testing.assert_close(((y - eps) / s).std(1), ((y - c) / s).std(1), rtol=1e-12, atol=0)
    x0 = ClassifierFreeGuidance(gm.denoise_class, 4.0, K, rescale=1.0, rescale_space="x0")(y, sigma, labels)
    torch.testing.assert_close(x0.std(1), c.std(1), rtol=1e-12, atol=0)


def test_rescale_at_sigma_zero(gm):
    """v and eps do not exist at sigma = 0: such samples keep the plain guided output, without NaN."""
    y, sigma, labels = batch()
    sigma = sigma.clone()
    sigma[0] = 0.0
    plain = ClassifierFreeGuidance(gm.denoise_class, 4.0, K)(y, sigma, labels)
    out = ClassifierFreeGuidance(gm.denoise_class, 4.0, K, rescale=1.0)(y, sigma, labels)
    assert torch.isfinite(out).all() and torch.equal(out[0], plain[0])


# ---------------------------------------------------------------------------------------------
# Interval (Kynkaanniemi et al. 2024)


def test_interval(gm):
    y, sigma, labels = batch()
    c, guided = gm.denoise_class(y, sigma, labels), ClassifierFreeGuidance(gm.denoise_class, 3.0, K)(y, sigma, labels)
    den = Recorder(gm)
    outside = ClassifierFreeGuidance(den, 3.0, K, interval=(20.0, 50.0))
    assert torch.equal(outside(y, sigma, labels), c) and [n for n, _ in den.calls] == [6]
    den.calls.clear()
    lo, hi = float(sigma[1]), float(sigma[4])  # (lo, hi]: samples 2, 3, 4 are guided, 0, 1, 5 are not
    out = ClassifierFreeGuidance(den, 3.0, K, interval=(lo, hi))(y, sigma, labels)
    assert [n for n, _ in den.calls] == [6 + 3]  # one call: all conditional rows + the guided ones' null rows
    assert torch.equal(den.calls[0][1][6:], torch.full((3,), K))
    inside = torch.tensor([False, False, True, True, True, False])
    assert torch.equal(out[~inside], c[~inside])
    torch.testing.assert_close(out[inside], guided[inside], rtol=1e-12, atol=1e-12)
    # a scalar sigma works like a (B,) one
    assert torch.equal(ClassifierFreeGuidance(gm.denoise_class, 3.0, K, interval=(0.5, 1.0))(y, 2.0, labels),
                       gm.denoise_class(y, 2.0, labels))


# ---------------------------------------------------------------------------------------------
# Conditions: text, concat, context, negatives


class Echo:
    """Returns y and records each call's condition: for testing what reaches the network."""

    def __init__(self):
        self.conds = []

    def __call__(self, y, sigma, cond=None):
        self.conds.append(cond)
        return y.clone()


def test_text_and_concat_conditions():
    y, sigma = torch.randn(2, 3, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    concat = torch.randn(2, 1, 3)
    den = Echo()
    ClassifierFreeGuidance(den, 2.0)(y, sigma, {"text": ["a cat", "a dog"], "concat": concat})
    (cond,) = den.conds
    assert cond["text"] == ["a cat", "a dog", "", ""]
    assert torch.equal(cond["concat"], torch.cat([concat, concat]))  # an image condition is not dropped


@pytest.mark.parametrize("negative, expected", [
    ("blurry", ["blurry", "blurry"]),
    (["blurry"], ["blurry", "blurry"]),
    (["n1", "n2"], ["n1", "n2"]),
    ({"text": ["blurry"]}, ["blurry", "blurry"]),      # the CLI's form: one prompt for any batch
])
def test_negative_prompts(negative, expected):
    y, sigma = torch.randn(2, 3), torch.ones(2, dtype=torch.float64)
    den = Echo()
    ClassifierFreeGuidance(den, 2.0, negative=negative)(y, sigma, {"text": ["a", "b"], "concat": y})
    assert den.conds[0]["text"] == ["a", "b", *expected]
    assert torch.equal(den.conds[0]["concat"], torch.cat([y, y]))


def test_negative_labels(gm):
    y, sigma, labels = batch()
    den = Recorder(gm)
    out = ClassifierFreeGuidance(den, 2.0, K, negative=0)(y, sigma, labels)
    assert torch.equal(den.calls[0][1][6:], torch.zeros(6, dtype=torch.long))
    u = gm.denoise_class(y, sigma, torch.zeros(6, dtype=torch.long))
    torch.testing.assert_close(out, u + 2 * (gm.denoise_class(y, sigma, labels) - u))
    with pytest.raises(ValueError, match="label tensor but negative"):
        ClassifierFreeGuidance(den, 2.0, K, negative="blurry")(y, sigma, labels)


def test_context_conditions():
    ctx, mask = torch.randn(2, 3, 4), torch.tensor([[True, True, False], [True, True, True]])
    null = null_condition({"context": ctx, "context_mask": mask}, None)
    assert torch.equal(null["context"], ctx) and not null["context_mask"].any()  # no token attended
    assert not null_condition({"context": ctx}, None)["context_mask"].any()
    # different lengths: zero-padded, masks padded with False; a missing mask on one side is all True
    longer = {"context": torch.ones(2, 5, 4), "context_mask": torch.ones(2, 5, dtype=torch.bool)}
    both = concat_conditions({"context": ctx}, longer)
    assert both["context"].shape == (4, 5, 4) and both["context_mask"].tolist()[0] == [True] * 3 + [False] * 2
    assert torch.equal(both["context"][:2, :3], ctx) and not both["context"][:2, 3:].any()
    den = Echo()
    neg = {"context": torch.ones(1, 2, 4)}
    cond = {"context": ctx, "context_mask": mask}
    ClassifierFreeGuidance(den, 2.0, negative=neg)(torch.zeros(2, 1), torch.ones(2), cond)
    cond = den.conds[0]
    assert cond["context_mask"].tolist()[2:] == [[True, True, False]] * 2  # the negative's own tokens attend


def test_condition_helpers():
    cond = {"labels": torch.tensor([1, 2, 3]), "text": ["a", "b", "c"], "concat": torch.arange(3.0)[:, None]}
    null = null_condition(cond, 10)
    assert null["labels"].tolist() == [10] * 3 and null["text"] == [""] * 3 and null["concat"] is cond["concat"]
    assert null_condition(None, 10) is None and null_condition(torch.tensor([4]), 7).tolist() == [7]
    sub = index_condition(cond, torch.tensor([2, 0]))
    assert sub["labels"].tolist() == [3, 1] and sub["text"] == ["c", "a"] and sub["concat"].flatten().tolist() == [2, 0]
    assert concat_conditions(None, None) is None
    with pytest.raises(ValueError, match="different keys"):
        concat_conditions({"labels": cond["labels"]}, {"text": ["x"]})
    with pytest.raises(ValueError, match="types"):
        concat_conditions(torch.tensor([1]), ["x"])
    with pytest.raises(ValueError, match="shapes"):
        concat_conditions(torch.zeros(2, 3), torch.zeros(2, 4))


def test_cfg_errors(gm):
    y, sigma, labels = batch()
    with pytest.raises(ValueError, match="null_label is None"):
        ClassifierFreeGuidance(gm.denoise_class, 2.0)(y, sigma, labels)
    with pytest.raises(ValueError, match="3 entries for a batch of 6"):
        ClassifierFreeGuidance(Echo(), 2.0)(y, sigma, {"text": ["a"] * 3})
    with pytest.raises(ValueError, match="not a single string"):
        ClassifierFreeGuidance(Echo(), 2.0)(y, sigma, {"text": "a cat"})
    with pytest.raises(ValueError, match="2 entries for a batch of 6"):
        ClassifierFreeGuidance(Echo(), 2.0, negative=["a", "b"])(y, sigma, {"text": ["a"] * 6})
    with pytest.raises(ValueError, match="label tensor or a dict"):
        ClassifierFreeGuidance(Echo(), 2.0)(y, sigma, ["a"] * 6)
    for kw in (dict(rescale=1.5), dict(interval=(1.0, 0.5)), dict(interval=(-1.0, 2.0)), dict(rescale_space="z")):
        with pytest.raises(ValueError):
            ClassifierFreeGuidance(gm.denoise_class, 2.0, K, **kw)


def test_cfg_on_a_unet_with_labels_and_concat():
    """A real network through the Denoiser adapter: one batched call equals the two separate calls."""
    torch.manual_seed(0)
    net = UNet(in_channels=1, concat_channels=1, num_classes=3, channels=8, channel_mult=(1, 2), num_res_blocks=1,
               attention_levels=(1,), head_channels=8, norm_groups=4).double()
    with torch.no_grad():  # give the zero-initialised layers weights, so the labels matter
        for p in net.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.1)
    den = Denoiser(net, get_process("vp_cosine"), "v")
    g = torch.Generator().manual_seed(0)
    y, sigma = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64), torch.tensor([0.5, 3.0], dtype=torch.float64)
    cond = {"labels": torch.tensor([0, 2]), "concat": torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)}
    with torch.no_grad():
        out = ClassifierFreeGuidance(den, 2.5, 3, rescale=0.5)(y, sigma, cond)
        c, u = den(y, sigma, cond), den(y, sigma, {**cond, "labels": torch.tensor([3, 3])})
    ref = ClassifierFreeGuidance(lambda *a: None, 2.5, 3, rescale=0.5).combine(c, u, y, sigma)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(c, u)
