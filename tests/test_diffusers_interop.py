"""diffusers folders in and out (denoisekit.compat.diffusers_io), with tiny random models both ways: the networks
agree to float32 precision, a denoisekit sampler equals diffusers' scheduler loop on the same grid, and bad folders
are one line naming the file and key. Also the model card every run gets."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from denoisekit import get_process
from denoisekit.cli import main
from denoisekit.compat.diffusers import ddpm_config, run_scheduler, scheduler_sigmas
from denoisekit.compat.diffusers_io import export_diffusers, import_diffusers, to_unet2d
from denoisekit.engine.checkpoint import save_checkpoint
from denoisekit.models.unet import UNet
from denoisekit.prediction import Denoiser
from denoisekit.samplers import sample_ddim
from denoisekit.train.config import config_from_dict, save_config
from denoisekit.train.model_card import model_card
from denoisekit.train.run import load_model

diffusers = pytest.importorskip("diffusers")

#: float32 networks (diffusers' attention and GroupNorm kernels vs ours): differences ~1e-6 on outputs of size ~3.
ATOL = 2e-5
OURS = {"in_channels": 1, "channels": 128, "channel_mult": [1, 1], "num_res_blocks": 1, "attention_levels": [1],
        "head_channels": 64, "norm_groups": 32}


def _tiny_unet2d(**extra) -> "diffusers.UNet2DModel":
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                                 attention_head_dim=16, **extra).eval()


def _folder(tmp_path: Path, unet, scheduler, name: str = "tiny") -> Path:
    unet.save_pretrained(tmp_path / name / "unet")
    scheduler.save_pretrained(tmp_path / name / "scheduler")
    return tmp_path / name


def _randomise(net: torch.nn.Module, seed: int = 0) -> None:
    """Our U-Net starts as the zero function (zero-initialised output convs): give every weight some signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _our_run(tmp_path: Path, prediction: str = "eps", **options) -> tuple[Path, UNet]:
    """A run directory holding a random U-Net (no training: a config and one checkpoint)."""
    config = config_from_dict({"data": {"name": "digits", "size": 8}, "model": {"name": "unet", **OURS, **options},
                               "process": {"name": "ddpm", "prediction": prediction},
                               "condition": {"kind": "class" if options.get("num_classes") else "none"},
                               "train": {"steps": 1, "save_every": 0}})
    net = UNet(**{**OURS, **options})
    _randomise(net)
    run = tmp_path / "ours"
    run.mkdir()
    save_config(config, run / "config.yaml")
    sd = net.state_dict()
    save_checkpoint(run / "checkpoints", 1, model=sd, ema=sd, optimizer={"state": {}, "param_groups": []},
                    state={"image_shape": [1, 8, 8], "classes": [], "depends": [], "elapsed_s": 0.0})
    return run, net


@pytest.mark.slow  # ~3 s: most of it importing diffusers
def test_import_equals_the_diffusers_unet(tmp_path):
    unet = _tiny_unet2d()
    sched = diffusers.DDIMScheduler(prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2")
    run = import_diffusers(_folder(tmp_path, unet, sched), tmp_path / "run")
    model = load_model(run)
    process = model.process
    assert model.denoiser.prediction == "v" and process.beta_schedule == "cosine" and model.image_shape == (1, 8, 8)
    theirs = diffusers.DDIMScheduler.from_pretrained(tmp_path / "tiny" / "scheduler")
    assert torch.allclose(process.alphas_cumprod.float(), theirs.alphas_cumprod, rtol=1e-5, atol=1e-6)
    x, steps = torch.randn(3, 1, 8, 8), torch.tensor([0, 321, 999])
    with torch.no_grad():
        assert torch.equal(model.denoiser.net(x, steps.float()), unet(x, steps).sample)
    assert (run / "README.md").read_text().startswith("---\nlibrary_name: denoisekit\n")


@pytest.mark.slow
def test_import_of_a_text_conditional_unet(tmp_path):
    """A ``UNet2DConditionModel`` becomes an ``embedding`` run: its cross-attention reads ``cond["embedding"]``, and
    guidance's null (no embedding) is a single zero token."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                                          layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8,
                                          cross_attention_dim=12, attention_head_dim=8).eval()
    run = import_diffusers(_folder(tmp_path, unet, diffusers.DDPMScheduler()), tmp_path / "run")
    model = load_model(run)
    assert model.config.condition.kind == "embedding" and model.denoiser.prediction == "eps"
    x, steps, ctx = torch.randn(2, 1, 8, 8), torch.tensor([3, 500]), torch.randn(2, 5, 12)
    with torch.no_grad():
        ours = model.denoiser.net(x, steps.float(), {"embedding": ctx})
        assert torch.equal(ours, unet(x, steps, encoder_hidden_states=ctx).sample)
        null = model.denoiser.net(x, steps.float(), None)
        assert torch.equal(null, unet(x, steps, encoder_hidden_states=torch.zeros(2, 1, 12)).sample)
    assert not torch.equal(ours, null)


@pytest.mark.parametrize("time_input", ["model", "t"])
def test_export_equals_our_unet(time_input):
    net = UNet(**OURS, num_classes=3)
    _randomise(net)
    den = Denoiser(net, get_process("ddpm", beta_schedule="scaled_linear"), "v", time_input=time_input)
    unet, sched = to_unet2d(den, (1, 8, 8))
    assert sched["prediction_type"] == "v_prediction" and sched["beta_schedule"] == "scaled_linear"
    x, steps, labels = torch.randn(3, 1, 8, 8), torch.tensor([0, 17, 999]), torch.tensor([0, 2, 3])  # 3: null label
    with torch.no_grad():
        ours = net(x, den.clock.time(steps.double() / 999), labels)
        theirs = unet(x, steps, class_labels=labels).sample
    assert ours.abs().max() > 0.5 and (ours - theirs).abs().max() < ATOL * ours.abs().max()


@pytest.mark.slow
def test_export_folder_loads_in_diffusers_and_round_trips(tmp_path):
    run, net = _our_run(tmp_path)
    out = export_diffusers(run, tmp_path / "exported")
    unet = diffusers.UNet2DModel.from_pretrained(out / "unet").eval()
    sched = diffusers.DDPMScheduler.from_pretrained(out / "scheduler")
    assert sched.config.prediction_type == "epsilon" and (out / "README.md").is_file()
    x, steps = torch.randn(2, 1, 8, 8), torch.tensor([5, 700])
    with torch.no_grad():
        ours = net(x, steps.double())
        assert (ours - unet(x, steps).sample).abs().max() < ATOL * ours.abs().max()
        pipe = diffusers.DDPMPipeline.from_pretrained(out)
        images = pipe(batch_size=1, num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 8, 8, 1)
    back = load_model(import_diffusers(out, tmp_path / "back"))  # and back: the learned rows at integer steps
    with torch.no_grad():
        assert (back.denoiser.net(x, steps.float()) - ours).abs().max() < ATOL * ours.abs().max()


def test_sampler_equals_the_diffusers_scheduler_loop(tmp_path):
    unet = _tiny_unet2d()
    process = get_process("ddpm")
    sched = diffusers.DDIMScheduler(**ddpm_config(process), clip_sample=False, set_alpha_to_one=True,
                                    timestep_spacing="trailing")
    model = load_model(import_diffusers(_folder(tmp_path, unet, sched), tmp_path / "run"))
    sched.set_timesteps(8)
    sigmas = scheduler_sigmas(sched)
    y = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * math.sqrt(1 + float(sigmas[0]) ** 2)
    with torch.no_grad():
        theirs = run_scheduler(sched, lambda x, t: unet(x, t).sample, y, frame="ve")
        ours = sample_ddim(model.denoiser, y, sigmas)
    assert ours.abs().max() > 0.1 and (ours - theirs).abs().max() < ATOL * max(1.0, ours.abs().max().item())


def _one_line_error(capsys, argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_folders_are_one_line(tmp_path, capsys):
    unet, sched = _tiny_unet2d(), diffusers.DDPMScheduler()
    good = _folder(tmp_path, unet, sched)
    out = str(tmp_path / "out")
    _one_line_error(capsys, ["import-diffusers", str(tmp_path / "nope"), "--out", out], "does not exist")
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    cfg_path = bad / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "down_block_types": ["DownBlock2D", "FancyDownBlock2D"]}))
    _one_line_error(capsys, ["import-diffusers", str(bad), "--out", out], "config.json", "down_block_types[1]",
                    "FancyDownBlock2D")
    cfg_path.write_text(json.dumps(cfg))
    sched_path = bad / "scheduler" / "scheduler_config.json"
    sched_cfg = json.loads(sched_path.read_text())
    sched_path.write_text(json.dumps({**sched_cfg, "prediction_type": "flow"}))
    _one_line_error(capsys, ["import-diffusers", str(bad), "--out", out], "scheduler_config.json", "prediction_type",
                    "epsilon, v_prediction, sample")
    sched_path.unlink()
    _one_line_error(capsys, ["import-diffusers", str(bad), "--out", out], "scheduler_config.json", "not found")
    (bad / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    _one_line_error(capsys, ["import-diffusers", str(bad), "--out", out], "diffusion_pytorch_model.safetensors")
    assert not Path(out).exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_export_names_what_does_not_map(tmp_path, capsys):
    run, _ = _our_run(tmp_path, channels=32, head_channels=32)
    out = tmp_path / "exported"
    _one_line_error(capsys, ["export-diffusers", str(run), "--out", str(out)], "model.channels * channel_mult[0] = 32")
    net = UNet(**{**OURS, "context_dim": 8})
    with pytest.raises(ValueError, match="model.context_dim=8"):
        to_unet2d(Denoiser(net, get_process("ddpm")), (1, 8, 8))
    with pytest.raises(ValueError, match="process 've'"):
        to_unet2d(Denoiser(UNet(**OURS), get_process("ve")), (1, 8, 8))
    with pytest.raises(ValueError, match="process.prediction='flow'"):
        to_unet2d(Denoiser(UNet(**OURS), get_process("ddpm"), "flow"), (1, 8, 8))
    assert not out.exists()


@pytest.mark.slow
def test_model_card_of_a_trained_run(tmp_path, capsys):
    from denoisekit.train.trainer import train_from_config

    base = train_from_config(config_from_dict({
        "data": {"name": "digits", "size": 8}, "model": {"name": "unet", "in_channels": 1, "channels": 16,
                                                         "channel_mult": [1], "num_res_blocks": 1, "attention_levels": [],
                                                         "mid_attention": False, "head_channels": 16, "num_classes": 10},
        "condition": {"kind": "class"}, "train": {"steps": 2, "batch_size": 4, "save_every": 0}, "sample": {"n": 0}}),
        tmp_path / "base", progress=False)
    card = (base / "README.md").read_text()
    head, body = card.split("\n---\n", 1)
    assert "library_name: denoisekit" in head and '"digits"' in head and "base_model" not in head
    for needle in ("## Data", "- type: `unet`", "- parameters: ", "prediction: `eps`", "- steps: 2 of 2",
                   "CPU time of the training process", f"denoisekit sample {base} --label all", "None: this run"):
        assert needle in body, needle
    (base / "metrics.csv").write_text("step,name,value\n1,fid,9.5\n2,fid,7.25\n")
    assert main(["card", str(base)]) == 0
    assert "Last evaluation (step 2)" in (base / "README.md").read_text() and "| fid | 7.25 |" in model_card(base)
    state = {"image_shape": [1, 8, 8], "depends": [{"role": "init", "run": str(base), "checkpoint": "step_00000002",
                                                    "weights": "ema", "sha256": "ab" * 32}]}
    child = tmp_path / "child"
    shutil.copytree(base, child)
    shutil.rmtree(child / "checkpoints")
    save_checkpoint(child / "checkpoints", 2, model={}, ema={}, optimizer={"state": {}, "param_groups": []}, state=state)
    card = model_card(child)
    assert f'base_model:\n- "{base}"' in card and f"- init: `{base}`" in card
