"""The latent-diffusion autoencoder: shapes, posterior maths, GAN loss pieces, latent scaling, training,
checkpoints and error messages."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from denoisekit.models.autoencoder import Autoencoder, AutoencoderConfig, DiagonalGaussian, compute_latent_scale
from denoisekit.models.discriminator import (DiscriminatorConfig, PatchDiscriminator, adaptive_weight, disc_factor,
                                             hinge_d_loss, hinge_g_loss)
from denoisekit.train.autoencoder import (AutoencoderTrainConfig, AutoencoderTrainer, load_autoencoder,
                                          load_autoencoder_config, save_autoencoder, train_autoencoder)
from denoisekit.train.autoencoder_eval import psnr

CONFIGS = Path(__file__).parent.parent / "configs"


def tiny(factor: int, **kw) -> Autoencoder:
    torch.manual_seed(0)
    return Autoencoder(AutoencoderConfig(channels=8, factor=factor, norm_groups=4, **kw)).double()


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_encode_decode_shapes(factor):
    ae = tiny(factor, latent_channels=3)
    x = torch.rand(2, 3, 16, 24, dtype=torch.float64) * 2 - 1
    post = ae.encode(x)
    assert post.mean.shape == post.logvar.shape == (2, 3, 16 // factor, 24 // factor)
    assert ae.decode(post.sample()).shape == x.shape
    recon, p2 = ae(x, sample_posterior=False)
    assert recon.shape == x.shape and torch.equal(p2.mode(), post.mean)
    assert ae.encode_latents(x).shape == post.mean.shape
    assert ae.decode_latents(ae.encode_latents(x)).shape == x.shape


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="factor must be one of 2, 4, 8"):
        AutoencoderConfig(factor=16)
    with pytest.raises(ValueError, match="needs log2\\(factor\\) \\+ 1 = 3 entries"):
        AutoencoderConfig(factor=4, channel_mult=(1, 2))
    assert AutoencoderConfig(factor=8).channel_mult == (1, 2, 4, 4)  # LDM's KL-f8 layout
    ae = tiny(4)
    with pytest.raises(ValueError, match="divisible by 4"):
        ae.encode(torch.zeros(1, 3, 10, 12, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"latents of shape \(B, 4, h, w\)"):
        ae.decode(torch.zeros(1, 3, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="allowed: batch, group, none"):
        DiscriminatorConfig(norm="instance")


def test_kl_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    logvar = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    post = DiagonalGaussian(torch.cat([mean, logvar], 1))
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(post.kl(), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(DiagonalGaussian(torch.zeros(1, 4, 2, 2)).kl(), torch.zeros(1))  # q = prior


def test_reparameterised_sample_statistics_and_gradients():
    mean = torch.full((20000, 1, 1, 1), 1.5, dtype=torch.float64, requires_grad=True)
    logvar = torch.full((20000, 1, 1, 1), math.log(0.25), dtype=torch.float64, requires_grad=True)
    z = DiagonalGaussian(torch.cat([mean, logvar], 1)).sample(torch.Generator().manual_seed(1))
    # standard errors: 0.5 / sqrt(20000) = 0.0035 for the mean, ~0.0025 for the std
    z = z.detach()
    assert abs(float(z.mean()) - 1.5) < 0.015 and abs(float(z.std()) - 0.5) < 0.01
    z = DiagonalGaussian(torch.cat([mean, logvar], 1)).sample(torch.Generator().manual_seed(1))
    z.sum().backward()
    assert torch.allclose(mean.grad, torch.ones_like(mean))  # dz/dmean = 1: the reparameterisation trick
    assert logvar.grad.abs().sum() > 0
    # per-sample generators: a sample does not depend on the batch around it
    params = torch.zeros(4, 2, 3, 3)
    a = DiagonalGaussian(params).sample([torch.Generator().manual_seed(s) for s in range(4)])
    b = DiagonalGaussian(params[2:3]).sample([torch.Generator().manual_seed(2)])
    assert torch.equal(a[2:3], b)


def test_adaptive_weight_formula():
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64, requires_grad=True)
    rec = (3 * w).sum()          # grad = 3 everywhere: norm 6
    g = (w ** 2).sum()           # grad = 2 w
    expected = 6.0 / (float((2 * w.detach()).norm()) + 1e-4)
    lam = adaptive_weight(rec, g, w)
    assert math.isclose(float(lam), expected, rel_tol=1e-12) and not lam.requires_grad
    assert float(adaptive_weight(rec, g * 1e-12, w, max_weight=10.0)) == 10.0  # clamped
    assert disc_factor(99, 100) == 0.0 and disc_factor(100, 100) == 1.0


def test_hinge_losses_and_patch_discriminator():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])
    # D: relu(1 - real) = [0, 0.5] -> 0.25; relu(1 + fake) = [0, 1] -> 0.5; half the sum
    assert math.isclose(float(hinge_d_loss(real, fake)), 0.375)
    assert math.isclose(float(hinge_g_loss(fake)), 1.5)
    d = PatchDiscriminator(DiscriminatorConfig(in_channels=1, channels=8, layers=2))
    assert d(torch.zeros(2, 1, 32, 32)).shape == (2, 1, 6, 6)  # 32 -> 16 -> 8 -> 7 -> 6 patches
    with pytest.raises(ValueError, match=r"expects \(B, 1, H, W\)"):
        d(torch.zeros(2, 3, 32, 32))


@torch.no_grad()
def test_scale_factor_makes_latents_unit_std():
    ae = tiny(4)
    x = torch.rand(16, 3, 16, 16, dtype=torch.float64) * 2 - 1
    scale, shift = compute_latent_scale(ae, x, sample=False, batch_size=5)
    ae.set_latent_scale(scale, shift)
    z = ae.encode_latents(x)
    assert shift == 0.0 and math.isclose(float(z.std()), 1.0, rel_tol=1e-9)
    scale, shift = compute_latent_scale(ae, x, sample=False, center=True)
    ae.set_latent_scale(scale, shift)
    z = ae.encode_latents(x)
    assert abs(float(z.mean())) < 1e-9 and math.isclose(float(z.std()), 1.0, rel_tol=1e-9)
    torch.testing.assert_close(ae.decode_latents(z), ae.decode(ae.encode(x).mode()))
    assert "scale_factor" in ae.state_dict() and "shift" in ae.state_dict()  # saved with the weights


def _config(**sections) -> AutoencoderTrainConfig:
    d = {"data": {"name": "digits", "size": 8},
         "model": {"in_channels": 1, "channels": 8, "factor": 2, "latent_channels": 2, "mid_attention": False,
                   "norm_groups": 4},
         "discriminator": {"channels": 8, "layers": 1},
         "loss": {"disc_start": 100},
         "optim": {"lr": 3e-3},
         "train": {"steps": 150, "batch_size": 16, "log_every": 50, "save_every": 0},
         "eval": {"features": "none", "scale_images": 200}}
    for k, v in sections.items():
        d[k] = {**d[k], **v}
    return AutoencoderTrainConfig.from_dict(d)


@pytest.mark.slow  # trains
def test_tiny_autoencoder_beats_mean_image(tmp_path):
    out = train_autoencoder(_config(), tmp_path / "run", progress=False)
    m = json.loads((out / "metrics.json").read_text())
    # 150 steps on 8x8 digits with 2x4x4 latents: the trivial reconstruction (the mean training image)
    # scores ~11.3 dB on the held-out split; a working autoencoder is well above it (~16-17 dB)
    assert m["n_held_out"] == 179 and m["psnr"] > m["psnr_mean_image"] + 3.0
    ae = load_autoencoder(out)
    assert math.isclose(float(ae.scale_factor), m["scale_factor"]) and m["scale_factor"] > 0
    state = load_file(str(out / "autoencoder.safetensors"))
    assert torch.equal(state["scale_factor"], ae.scale_factor)
    rows = (out / "log.csv").read_text().splitlines()
    assert len(rows) == 4 and float(rows[-1].split(",")[4]) != 0.0  # the GAN is on in the last 50 steps


@pytest.mark.slow  # trains
def test_resume_is_exact(tmp_path):
    cfg = _config(loss={"disc_start": 2}, train={"steps": 6, "batch_size": 8, "save_every": 3},
                  eval={"held_out": 0, "scale_images": 16})
    train_autoencoder(cfg, tmp_path / "a", progress=False)
    AutoencoderTrainer(cfg, tmp_path / "b", progress=False).fit(stop_at=3)
    assert not (tmp_path / "b" / "autoencoder.json").exists()
    with pytest.raises(FileNotFoundError, match="checkpoints only"):
        load_autoencoder(tmp_path / "b")
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        AutoencoderTrainer(cfg, tmp_path / "b", progress=False)
    changed = _config(loss={"disc_start": 2, "kl_weight": 1e-3}, train={"steps": 6, "batch_size": 8, "save_every": 3},
                      eval={"held_out": 0, "scale_images": 16})
    with pytest.raises(ValueError, match="differs in loss.kl_weight"):
        AutoencoderTrainer(changed, tmp_path / "b", resume=True, progress=False)
    train_autoencoder(cfg, tmp_path / "b", resume=True, progress=False)
    a, b = (load_file(str(tmp_path / r / "autoencoder.safetensors")) for r in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ck = load_file(str(tmp_path / "b" / "checkpoints" / "step_00000006" / "model.safetensors"))
    assert any(k.startswith("discriminator.") for k in ck)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_autoencoder(tmp_path / "nowhere")
    ae = tiny(2)
    save_autoencoder(ae.float(), tmp_path / "ok")
    assert torch.equal(load_autoencoder(tmp_path / "ok" / "autoencoder.json").decoder.conv_out.weight,
                       ae.decoder.conv_out.weight.float())
    weights = tmp_path / "ok" / "autoencoder.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="autoencoder.safetensors"):
        load_autoencoder(tmp_path / "ok")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="autoencoder.safetensors"):
        load_autoencoder(tmp_path / "ok")
    (tmp_path / "ok" / "autoencoder.json").write_text("{not json")
    with pytest.raises(ValueError, match="autoencoder.json"):
        load_autoencoder(tmp_path / "ok")


def test_yaml_presets_and_overrides():
    presets = sorted((CONFIGS / "autoencoder").glob("*.yaml"))
    assert {p.name for p in presets} >= {"shapes-f4.yaml", "shapes-f8.yaml", "shapes64-f4.yaml", "emoji-f4.yaml",
                                         "digits-f2.yaml"}
    for path in presets:
        cfg = load_autoencoder_config(path, ["model.channels=16", "train.steps=10"])
        assert cfg.model.channels == 16 and cfg.train.steps == 10
        assert cfg.discriminator.in_channels == cfg.model.in_channels
        assert cfg.model.factor == int(path.stem.rsplit("-f", 1)[1])
        assert AutoencoderTrainConfig.from_dict(cfg.to_dict()) == cfg  # the run's config.yaml round-trips
    with pytest.raises(ValueError, match="valid keys at 'model'"):
        AutoencoderTrainConfig.from_dict({"model": {"chanels": 3}})
    with pytest.raises(ValueError, match="allowed: l1, l2"):
        AutoencoderTrainConfig.from_dict({}, ["loss.reconstruction=l3"])
    with pytest.raises(ValueError, match="grad_accum and train.mixed_precision are not supported"):
        AutoencoderTrainConfig.from_dict({}, ["train.grad_accum=2"])
    with pytest.raises(ValueError, match="optim.disc_lr must be > 0"):
        AutoencoderTrainConfig.from_dict({}, ["optim.disc_lr=0"])
    with pytest.raises(ValueError, match="data.split is 'all'"):
        AutoencoderTrainer(_config(data={"split": "all"}), "/nonexistent/never-written", progress=False)


def test_psnr():
    x = torch.zeros(2, 1, 4, 4)
    assert torch.allclose(psnr(x, x + 0.2), torch.full((2,), 10 * math.log10(4 / 0.04), dtype=torch.float64))
