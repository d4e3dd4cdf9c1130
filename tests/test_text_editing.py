"""Inversion (pipelines/inversion.py) and prompt-to-prompt (pipelines/p2p.py, models/attention_control.py):
DDIM inversion reconstructs on the exact GMM oracle as the steps grow, with and without guidance; null-text
inversion brings a guided reconstruction back to the image; the attention hook is the plain attention when
it changes nothing, and replace / refine / reweight / local blending do what Hertz et al. 2023 say."""

import itertools

import pytest
import torch

from denoisekit import GaussianMixture, get_process
from denoisekit.generation import Guidance, LoadedModel, SampleDefaults, generate
from denoisekit.models.attention_control import attention_control, attention_layers
from denoisekit.models.text import TextConditioned
from denoisekit.models.unet import UNet
from denoisekit.pipelines.inversion import (ddim_invert, inversion_grid, model_conditions, null_text_inversion,
                                            reconstruct)
from denoisekit.pipelines.p2p import (PromptToPromptControl, edit_plan, prompt_to_prompt, token_alignment,
                                      word_positions)
from denoisekit.prediction import Denoiser
from denoisekit.schedules import get_sigmas_karras

pytestmark = pytest.mark.usefixtures("one_thread")


class ClassOracle:
    """The exact class-conditional denoiser of a mixture whose components are the classes (label K: null)."""

    def __init__(self, gm: GaussianMixture):
        self.gm, self.process = gm, get_process("edm")

    def __call__(self, y, sigma, cond=None):
        return self.gm.denoise_class(y, sigma, cond)


class TextKind:
    kind, guidable = "text", True


@pytest.fixture(scope="module")
def text_model() -> LoadedModel:
    """A tiny random text-to-image U-Net (learned token encoder) whose zero-initialised layers are randomised,
    so that the prompt and the null embedding change its output."""
    torch.manual_seed(0)
    net = UNet(in_channels=3, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(0, 1),
               mid_attention=False, head_channels=8, norm_groups=4, context_dim=16)
    net = TextConditioned(net, "tokens", dim=16, layers=1, heads=2, max_tokens=12)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if not p.abs().sum():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    den = Denoiser(net, get_process("edm"), "edm").eval()
    return LoadedModel(den, (3, 8, 8), condition=TextKind(), defaults=SampleDefaults(cfg_scale=3.0, schedule="karras"))


def _images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1


# ----------------------------------------------------------------------------------------------
# inversion


def test_ddim_inversion_reconstructs_the_oracle_as_steps_grow_with_and_without_guidance(gm2):
    """Inversion then DDIM sampling with the same guidance returns the points; the error shrinks with the
    steps (median: a point on a boundary between modes is chaotic under the ODE). A guided reconstruction
    from an unguided inversion does not come back: the mismatch null-text inversion repairs."""
    den = ClassOracle(gm2)
    x = gm2.sample(64, torch.Generator().manual_seed(1)).double()
    labels = torch.randint(0, gm2.components, (64,), generator=torch.Generator().manual_seed(2))
    null = torch.full_like(labels, gm2.components)
    errors = {1.0: [], 3.0: []}
    for steps in (10, 40, 160):
        grid = get_sigmas_karras(steps, 0.01, 80.0)[:-1]
        for w, err in errors.items():
            inv = ddim_invert(den, x, grid, labels, null, scale=w)
            assert inv.trajectory[-1] is x and inv.trajectory[0] is inv.latent and len(inv.trajectory) == steps
            err.append((reconstruct(den, inv) - x).norm(dim=1).median().item())
    for w, err in errors.items():
        assert err[0] > err[1] > err[2] and err[2] < err[0] / 4, (w, err)
    inv = ddim_invert(den, x, get_sigmas_karras(160, 0.01, 80.0)[:-1], labels, null, scale=1.0)
    drift = (reconstruct(den, inv, scale=3.0) - x).norm(dim=1).median().item()
    assert drift > 5 * errors[1.0][-1], (drift, errors)


def test_null_condition_is_the_empty_prompt(text_model):
    """The null branch's tokens {context: E(""), mask all True} are exactly what the network makes of text ""."""
    y, s = _images(), torch.full((2,), 0.7, dtype=torch.float64)
    _, null = model_conditions(text_model, ["a red circle", "a blue square"], n=2)
    assert torch.equal(text_model.denoiser(y, s, null), text_model.denoiser(y, s, {"text": ["", ""]}))


def test_null_text_inversion_brings_the_guided_reconstruction_back(text_model):
    x, w = _images(), 7.5
    grid = inversion_grid(text_model, 6)
    cond, null = model_conditions(text_model, ["a red circle", "a large blue square"], n=2)
    plain = ddim_invert(text_model.denoiser, x, grid, cond, null)
    err_1 = (reconstruct(text_model.denoiser, plain) - x).square().mean().item()
    err_w = (reconstruct(text_model.denoiser, plain, scale=w) - x).square().mean().item()
    tuned = null_text_inversion(text_model.denoiser, x, grid, cond, null, scale=w, inner_steps=8, lr=0.05)
    back = reconstruct(text_model.denoiser, tuned)
    err_nt = (back - x).square().mean().item()
    to_pivot = (back - reconstruct(text_model.denoiser, plain)).square().mean().item()
    assert torch.equal(tuned.latent, plain.latent) and len(tuned.nulls) == 6  # the pivot is the w = 1 inversion
    # measured 0.136, 0.279, 0.122 and 0.011: the guided trajectory follows the unguided one it was fitted to
    assert err_w > 1.5 * err_1 and err_nt < 0.5 * err_w and to_pivot < 0.1 * err_w, (err_1, err_w, err_nt, to_pivot)
    nulls = [n["context"] for n in tuned.nulls]  # one null per step (Adam works in place: none may alias another)
    assert all(not torch.equal(a, b) for a, b in itertools.pairwise(nulls))
    with pytest.raises(ValueError, match="optimises the null condition's 'context'"):
        null_text_inversion(text_model.denoiser, x, grid, cond, {"text": ["", ""]}, scale=w)
    with pytest.raises(ValueError, match="--prompt needs a text model"):
        model_conditions(LoadedModel(ClassOracle(GaussianMixture.random()), (2,)), ["a circle"])


# ----------------------------------------------------------------------------------------------
# attention control


def test_attention_hook_that_changes_nothing_is_the_plain_attention(text_model):
    y, s = _images(), torch.full((2,), 0.7, dtype=torch.float64)
    cond = {"text": ["a red circle", "a blue square on the left"]}
    seen = []

    def identity(probs, *, layer, cross):
        seen.append((layer, cross, probs.shape))
        return probs

    plain = text_model.denoiser(y, s, cond)
    with attention_control(text_model.denoiser, identity):
        hooked = text_model.denoiser(y, s, cond)
        with pytest.raises(ValueError, match="already under attention control"), \
                attention_control(text_model.denoiser, identity):
            pass
    torch.testing.assert_close(hooked, plain, rtol=0, atol=1e-5)
    layers = attention_layers(text_model.denoiser)
    assert len(seen) == len(layers) and {c for _, c, _ in seen} == {True, False}
    assert all(m.control is None for _, m in layers)  # cleared after the block
    assert torch.equal(text_model.denoiser(y, s, cond), plain)


def test_controller_replace_refine_reweight_maps():
    src, edit = torch.rand(1, 2, 4, 5).softmax(-1), torch.rand(1, 2, 4, 5).softmax(-1)
    probs = torch.cat([src, edit])
    replace = PromptToPromptControl(1, range(5))
    replace.begin_step(cross=True, self_attention=False)
    assert torch.equal(replace(probs, layer="x", cross=True)[1], src[0])
    refine = PromptToPromptControl(1, [0, -1, 1, 2, -1], weights=[1, 2, 1, 1, 1])
    refine.begin_step(cross=True, self_attention=False)
    out = refine(probs, layer="x", cross=True)[1]
    assert torch.equal(out[..., [0, 2, 3]], src[0][..., [0, 1, 2]]) and torch.equal(out[..., 4], edit[0][..., 4])
    assert torch.equal(out[..., 1], 2 * edit[0][..., 1])
    refine.begin_step(cross=False, self_attention=True)  # outside the cross window: only self-attention is replaced
    assert torch.equal(refine(probs, layer="x", cross=True), probs)
    assert torch.equal(refine(probs, layer="x", cross=False)[1], src[0])
    with pytest.raises(ValueError, match="1 sources and 1 edits"):
        refine(probs[:1], layer="x", cross=True)


def test_token_alignment_and_edit_plans(text_model):
    enc = next(m for m in text_model.denoiser.modules() if isinstance(m, TextConditioned)).encoder
    assert token_alignment([1, 5, 6, 7], [1, 5, 9, 6, 7]) == [0, 1, -1, 2, 3]
    assert word_positions(enc, "a large red circle", ["red"]) == [3]  # BOS, a, large, red
    align, weights = edit_plan(enc, "a circle", "a large circle", "refine")
    assert align == [0, 1, -1, 2] and weights is None
    assert edit_plan(enc, "a red circle", "a red circle", "reweight", {"red": 2.0}) == ([0, 1, 2, 3], [1, 1, 2.0, 1])
    with pytest.raises(ValueError, match="use mode refine"):
        edit_plan(enc, "a circle", "a large circle", "replace")
    with pytest.raises(ValueError, match="reweight needs weights"):
        edit_plan(enc, "a circle", "a circle", "reweight")
    with pytest.raises(ValueError, match="'blue' is not in the prompt"):
        edit_plan(enc, "a circle", "a circle", "reweight", {"blue": 2.0})
    with pytest.raises(ValueError, match="allowed: refine, replace, reweight"):
        edit_plan(enc, "a circle", "a circle", "swap")


# ----------------------------------------------------------------------------------------------
# prompt-to-prompt


def test_p2p_source_is_the_models_own_generation_and_identity_edits_reproduce_it(text_model):
    n, steps, w = 2, 5, 3.0
    ref = generate(text_model, n, {"text": ["a red circle"] * n}, sampler="ddim", nfe=steps, schedule="karras",
                   guidance=Guidance(cfg_scale=w), seed=7)
    for mode, weights in (("replace", None), ("refine", None), ("reweight", {"red": 1.0})):
        res = prompt_to_prompt(text_model, "a red circle", "a red circle", n=n, mode=mode, weights=weights,
                               steps=steps, scale=w, seed=7)
        torch.testing.assert_close(res.source, ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(res.edit, ref, rtol=0, atol=1e-5)
    boosted = prompt_to_prompt(text_model, "a red circle", "a red circle", n=n, mode="reweight",
                               weights={"red": 3.0}, steps=steps, scale=w, seed=7)
    assert (boosted.edit - ref).abs().max() > 1e-3


def test_local_blend_mask_and_blending():
    """The mask is the union of the source's and the edit's thresholded word maps; outside it the edit is the
    source (threshold 1 on the tiny model, whose near-uniform maps never pass a lower one: nothing is edited)."""
    probs = torch.full((2, 1, 36, 3), 0.01)
    probs[0, 0, 7, 1] = probs[1, 0, 28, 2] = 1.0  # source token 1 hot at (1, 1), edit token 2 at (4, 4) of 6 x 6
    control = PromptToPromptControl(1, range(3), blend=([1], [2]), image_size=(6, 6))
    control.begin_step(cross=False, self_attention=False)
    control(probs, layer="x", cross=True)
    mask = control.blend_mask(0.5)[0, 0]  # each hot pixel dilated by the 3 x 3 max-pool
    expected = torch.zeros(6, 6)
    expected[0:3, 0:3] = expected[3:6, 3:6] = 1
    assert torch.equal(mask, expected)


def test_local_blend_keeps_the_source_outside_the_mask(text_model):
    kwargs = {"n": 2, "steps": 5, "scale": 3.0}
    free = prompt_to_prompt(text_model, "a red circle", "a blue circle", **kwargs)
    res = prompt_to_prompt(text_model, "a red circle", "a blue circle", blend=(["circle"], ["circle"]), threshold=1.0,
                           **kwargs)
    assert (free.edit - free.source).abs().max() > 1e-3
    assert res.mask.sum() == 0 and torch.equal(res.edit, res.source)


def test_p2p_of_a_real_image_starts_from_its_null_text_inversion(text_model):
    x, grid = _images(1), inversion_grid(text_model, 4)
    cond, null = model_conditions(text_model, ["a red circle"], n=1)
    inv = null_text_inversion(text_model.denoiser, x, grid, cond, null, scale=3.0, inner_steps=2)
    res = prompt_to_prompt(text_model, "a red circle", "a blue circle", inversion=inv, scale=3.0)
    torch.testing.assert_close(res.source, reconstruct(text_model.denoiser, inv), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="cross_steps must be in"):
        prompt_to_prompt(text_model, "a red circle", "a blue circle", cross_steps=1.5)
