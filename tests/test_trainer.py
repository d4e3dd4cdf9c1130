"""The trainer: exact resume, NaN handling, multi-process equivalence, EMA, LR schedule, logs, load_run.

A tiny conv net and a synthetic dataset are registered under test names (per test, by the ``registered``
fixture), so these tests do not depend on the image backbones. Run as a script
(``python tests/test_trainer.py worker CONFIG OUT``) this file is the worker that ``accelerate launch``
starts for the 2-process test.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from denoisekit.train.config import Config, apply_overrides, config_from_dict, save_config
from denoisekit.data import IMAGE_DATASETS as DATASETS
from denoisekit.losses import DiffusionLoss
from denoisekit.models import MODELS
from denoisekit.process import get_process
from denoisekit.prediction import Denoiser
from denoisekit.engine.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from denoisekit.engine.ema import EMA, gamma_to_sigma_rel, sigma_rel_to_gamma
from denoisekit.engine.stream import StreamSampler
from denoisekit.train.trainer import Trainer, train_from_config
from denoisekit.train.run import load_run, run_info
from denoisekit.engine.optim import TrainingDiverged, lr_factor
from recipe_cases import final_tensors  # the engine's checkpoint contents, shared with test_recipes


@dataclass(frozen=True)
class TinyNetConfig:
    channels: int = 1
    width: int = 8
    num_classes: int | None = None
    dropout: float = 0.0
    nan_after: int | None = None  # forward calls after which the output is NaN (tests)


class TinyNet(nn.Module):
    """``net(x, time, cond)``: two convs, a time feature and a label embedding (null label = num_classes)."""

    config_class = TinyNetConfig

    def __init__(self, config: TinyNetConfig | None = None, **kw):
        super().__init__()
        self.config = c = config or TinyNetConfig(**kw)
        self.inp = nn.Conv2d(c.channels, c.width, 3, padding=1)
        self.time = nn.Linear(2, c.width)
        self.label = nn.Embedding(c.num_classes + 1, c.width) if c.num_classes else None
        self.drop = nn.Dropout(c.dropout)
        self.out = nn.Conv2d(c.width, c.channels, 3, padding=1)
        self.calls = 0

    def forward(self, x, time, cond=None):
        self.calls += 1
        s = torch.as_tensor(time, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(x.shape[0], 1) / 1000
        h = self.inp(x) + self.time(torch.cat([torch.sin(s), torch.cos(s)], 1))[:, :, None, None]
        if self.label is not None:
            labels = torch.full((x.shape[0],), self.config.num_classes, device=x.device) if cond is None else cond
            h = h + self.label(labels)[:, :, None, None]
        out = self.out(self.drop(F.silu(h)))
        if self.config.nan_after is not None and self.calls > self.config.nan_after:
            out = out * math.nan
        return out


@dataclass(frozen=True)
class SynthConfig:
    n: int = 40
    size: int = 8
    classes: int = 3
    seed: int = 0
    nan_index: int | None = None


class SynthImages(torch.utils.data.Dataset):
    """Random images in [-1, 1] with labels; item ``nan_index`` is all NaN (tests)."""

    Config = SynthConfig

    def __init__(self, config: SynthConfig | None = None, **kw):
        self.config = c = config or SynthConfig(**kw)
        g = torch.Generator().manual_seed(c.seed)
        self.images = torch.rand(c.n, 1, c.size, c.size, generator=g) * 2 - 1
        self.labels = torch.randint(0, c.classes, (c.n,), generator=g)
        if c.nan_index is not None:
            self.images[c.nan_index] = math.nan

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i]}


@pytest.fixture
def registered(monkeypatch):
    """TinyNet and SynthImages under their test names in the registries, for one test (undone after it)."""
    monkeypatch.setitem(MODELS, "test_tiny", TinyNet)
    monkeypatch.setitem(DATASETS, "test_synth", SynthImages)


BASE = {
    "data": {"name": "test_synth"},
    "model": {"name": "test_tiny", "num_classes": 3},
    "optim": {"lr": 1e-2, "warmup_steps": 2, "schedule": "cosine", "min_lr_ratio": 0.1},
    "ema": {"kind": "power", "sigma_rel": 0.1},
    "condition": {"kind": "class", "dropout": 0.3},
    "train": {"steps": 8, "batch_size": 8, "grad_accum": 2,
              "log_every": 2, "save_every": 4, "keep_last": 2},
    "sample": {"n": 0},
}


def make_config(*overrides: str, base: dict = BASE) -> Config:
    return config_from_dict(apply_overrides(base, overrides))


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------- resume


@pytest.mark.slow  # trains
def test_resume_continues_bit_exactly(registered, tmp_path):
    """8 steps straight == 4 steps, stop, resume, 4 steps: model, EMA and optimiser state identical.

    Exercises the data position, per-sample noise, label dropout, dropout (global RNG restored),
    gradient accumulation, warm-up + cosine LR and the power EMA.
    """
    cfg = make_config("model.dropout=0.2")
    straight = train_from_config(cfg, tmp_path / "straight", progress=False)
    Trainer(cfg, tmp_path / "resumed", progress=False).fit(stop_at=4)  # as if interrupted after step 4
    train_from_config(cfg, tmp_path / "resumed", resume=True, progress=False)
    a, b = final_tensors(straight), final_tensors(tmp_path / "resumed")
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the resumed run's log reads as one run: steps 2, 4, 6, 8 once each
    steps = [line.split(",")[0] for line in (tmp_path / "resumed" / "log.csv").read_text().splitlines()[1:]]
    assert steps == ["2", "4", "6", "8"]
    assert [s for s, _ in list_checkpoints(tmp_path / "resumed" / "checkpoints")] == [4, 8]


@pytest.mark.slow  # trains
def test_resume_refusals(registered, tmp_path):
    cfg = make_config("train.steps=2", "train.grad_accum=1")
    train_from_config(cfg, tmp_path / "run", progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train_from_config(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"optim\.lr"):
        train_from_config(make_config("train.steps=4", "train.grad_accum=1", "optim.lr=0.5"), tmp_path / "run",
                          resume=True, progress=False)
    # config=None reuses the run's config.yaml; under a cosine decay train.steps may not change ...
    train_from_config(None, tmp_path / "run", resume=True, progress=False)
    with pytest.raises(ValueError, match=r"optim\.schedule cosine"):
        train_from_config(make_config("train.steps=3", "train.grad_accum=1"), tmp_path / "run", resume=True,
                          progress=False)
    # ... under a constant learning rate a run may go on longer
    const = ("train.grad_accum=1", "optim.schedule=constant")
    train_from_config(make_config("train.steps=2", *const), tmp_path / "flat", progress=False)
    out = train_from_config(make_config("train.steps=3", *const), tmp_path / "flat", resume=True, progress=False)
    assert latest_checkpoint(out / "checkpoints").name == "step_00000003"


# --------------------------------------------------------------------------------------------- NaN


@pytest.mark.slow  # trains
def test_nan_batches_are_skipped_and_counted(registered, tmp_path):
    cfg = make_config("data.nan_index=5", "train.steps=10", "train.grad_accum=1", "train.max_nan_steps=5")
    sampler = iter(StreamSampler(40, cfg.train.seed, 0, 8))
    expected = sum(5 in [next(sampler) for _ in range(8)] for _ in range(10))
    assert expected >= 2  # item 5 is drawn once per epoch of 5 steps
    run = train_from_config(cfg, tmp_path / "run", progress=False)
    ck = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert ck["step"] == 10 and ck["state"]["nan"]["total"] == expected
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    assert (run / "log.csv").read_text().splitlines()[-1].split(",")[4] == str(expected)


@pytest.mark.slow  # trains
def test_consecutive_nans_stop_the_run_and_keep_the_last_checkpoint(registered, tmp_path):
    # the network turns NaN after 7 forward calls: steps 1-7 train, steps 8.. are NaN; save_every=3
    cfg = make_config("model.nan_after=7", "train.steps=20", "train.grad_accum=1", "train.save_every=3",
                      "train.max_nan_steps=3", "train.keep_last=5")
    with pytest.raises(TrainingDiverged, match=r"stopped at step 10: 3 consecutive steps \(8\.\.10\)") as info:
        train_from_config(cfg, tmp_path / "run", progress=False)
    assert "step_00000009" in str(info.value)  # saved during the streak: the skipped steps changed nothing
    saved = dict(list_checkpoints(tmp_path / "run" / "checkpoints"))
    assert sorted(saved) == [3, 6, 9]
    at6, at9 = load_checkpoint(saved[6]), load_checkpoint(saved[9])
    assert at9["state"]["nan"] == {"total": 2, "streak": 2}
    assert all(torch.isfinite(v).all() for v in at9["model"].values())
    assert not all(torch.equal(at6["model"][k], at9["model"][k]) for k in at9["model"])  # step 7 trained
    den, _ = load_run(tmp_path / "run")
    assert torch.isfinite(den.net.out.weight).all()


# --------------------------------------------------------------------------------------------- 2 processes


@pytest.mark.slow
def test_two_processes_match_one(registered, tmp_path, free_port):
    """``accelerate launch`` with 2 CPU processes (gloo) == 1 process at the same global batch."""
    cfg = make_config("train.steps=6", "train.save_every=0")
    save_config(cfg, tmp_path / "cfg.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port), __file__, "worker", str(tmp_path / "cfg.yaml"),
           str(tmp_path / "two")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    one = train_from_config(cfg, tmp_path / "one", progress=False)  # meanwhile, in this process
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    assert "world_size=2" in out, out[-3000:]
    a, b = final_tensors(one), final_tensors(tmp_path / "two")
    assert a.keys() == b.keys()
    for k in a:  # only the order of float additions differs (the gradient all-reduce)
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


# --------------------------------------------------------------------------------------------- pieces


def test_stream_sampler_shards_one_global_order():
    single = iter(StreamSampler(10, 3, 0, 4))
    ranks = [iter(StreamSampler(10, 3, 0, 4, rank=r, world=2)) for r in range(2)]
    for _ in range(6):
        expect = [next(single) for _ in range(4)]
        assert [next(ranks[0]) for _ in range(2)] + [next(ranks[1]) for _ in range(2)] == expect
    s = StreamSampler(10, 3, 0, 5)
    stream = [i for _, i in zip(range(30), iter(s))]
    for e in range(3):  # each epoch is a permutation, different per epoch
        assert sorted(stream[10 * e:10 * e + 10]) == list(range(10))
    assert stream[:10] != stream[10:20]
    assert [i for _, i in zip(range(10), iter(StreamSampler(10, 3, 15, 5)))] == stream[15:25]
    pairs = [p for _, p in zip(range(30), iter(StreamSampler(10, 3, 0, 5, with_epoch=True)))]
    assert pairs == [(i, k // 10) for k, i in enumerate(stream)]


@pytest.mark.slow  # trains
def test_epoch_aware_datasets_get_the_epoch_of_each_item(registered, tmp_path, monkeypatch):
    """A dataset with ``set_epoch`` (per-epoch random flips) sees each item's own epoch."""
    seen = []

    class Epochs(SynthImages):
        epoch = 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __getitem__(self, i):
            seen.append((i, self.epoch))
            return super().__getitem__(i)

    monkeypatch.setitem(DATASETS, "test_epochs", Epochs)
    trainer = Trainer(make_config("data.name=test_epochs", "data.n=12", "train.steps=3", "train.grad_accum=1"),
                      tmp_path / "run", progress=False)
    seen.clear()
    trainer.fit()
    stream = iter(StreamSampler(12, 0, 0, 8, with_epoch=True))
    assert seen == [next(stream) for _ in range(24)]


def test_per_sample_noise_does_not_depend_on_the_batch_split():
    """With one generator per sample the loss of a sample is the same in any batch (what makes N
    processes equal one)."""
    den = Denoiser(TinyNet(), get_process("ddpm"), "eps")
    x0 = torch.randn(6, 1, 8, 8)
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(6)]  # noqa: E731
    for loss in (DiffusionLoss(), DiffusionLoss("lognormal", "edm"), DiffusionLoss("logit_normal", "min_snr")):
        whole = loss(den, x0, generator=gens())
        g = gens()
        parts = torch.cat([loss(den, x0[:2], generator=g[:2]), loss(den, x0[2:], generator=g[2:])])
        torch.testing.assert_close(whole, parts)


def test_lr_factor():
    kw = dict(warmup=4, total=14)
    assert [lr_factor(s, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(100, **kw) == 1.0
    cos = [lr_factor(s, schedule="cosine", min_ratio=0.1, **kw) for s in range(4, 15)]
    assert cos[0] == 1.0 and math.isclose(cos[5], 0.55) and math.isclose(cos[-1], 0.1)
    assert all(a > b for a, b in zip(cos, cos[1:]))


def test_ema_profiles():
    # EDM2 (Karras et al. 2024, Sec. 3.1): gamma = 16.97 and 6.94 for sigma_rel = 0.05 and 0.10
    assert abs(sigma_rel_to_gamma(0.05) - 16.97) < 0.01 and abs(sigma_rel_to_gamma(0.10) - 6.94) < 0.01
    for s in (0.01, 0.05, 0.2):
        assert math.isclose(gamma_to_sigma_rel(sigma_rel_to_gamma(s)), s, rel_tol=1e-9)
    with pytest.raises(ValueError, match="sigma_rel"):
        sigma_rel_to_gamma(0.5)
    net = nn.Linear(1, 1, bias=False)
    warm = EMA(net, "warmup", decay=0.9)
    assert [warm.beta(n) for n in (1, 2, 90)] == [0.1, 2 / 11, 0.9]
    # the power EMA of theta_t = t weighs t^gamma: its mean is ~ (gamma + 1) / (gamma + 2) T
    ema = EMA(net, "power", sigma_rel=0.1)
    for t in range(1, 2001):
        net.weight.data.fill_(float(t))
        ema.update(net)
    g = ema.gamma
    assert abs(ema.module.weight.item() / 2000 - (g + 1) / (g + 2)) < 2e-3
    none = EMA(net, "none")
    none.update(net)
    assert torch.equal(none.module.weight, net.weight)
    with pytest.raises(ValueError, match="EMA state"):
        none.load_state_dict(ema.state_dict())


# --------------------------------------------------------------------------------------------- outputs


@pytest.mark.slow  # trains
def test_outputs_logs_grids_bf16_and_load_run(registered, tmp_path, monkeypatch):
    seen = []
    cfg = make_config("train.steps=4", "train.mixed_precision=bf16", "sample.n=6", "sample.nfe=3",
                      "sample.every=2", "sample.cfg_scale=2", "sample.sampler=euler")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were missing
    monkeypatch.setattr("denoisekit.engine.runlog._TB_WARNED", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = train_from_config(cfg, tmp_path / "run", progress=False,
                                metrics=lambda den, step: seen.append(step) or {"answer": 42.0})
    assert sum("TensorBoard" in str(w.message) for w in caught) == 1
    assert seen == [2, 4]  # every 2 steps; the end (step 4) is not evaluated twice
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "checkpoints", "log.csv", "metrics.csv", "loss.png", "samples.png", "samples"} <= names
    assert (run / "metrics.csv").read_text().splitlines()[1] == "2,answer,42"
    from PIL import Image

    from denoisekit.eval.plotting import BAND_GAP

    with Image.open(run / "samples.png") as img:  # 3 labelled class rows of 2, 8x8 upscaled to 32 + 2px padding
        assert img.size[0] > 2 * 34 + 2 and img.size[1] == 3 * 34 + 2 + 2 * BAND_GAP
    assert run_info(run) == {"step": 4, "image_shape": (1, 8, 8), "classes": []}
    den, loaded = load_run(run)
    assert loaded == cfg and not den.training and isinstance(den.net, TinyNet)
    ema = load_checkpoint(latest_checkpoint(run / "checkpoints"))["ema"]
    assert torch.equal(den.net.out.weight, ema["out.weight"])
    model_den, _ = load_run(run, weights="model")
    assert not torch.equal(model_den.net.out.weight, den.net.out.weight)


@pytest.mark.slow  # trains
def test_tensorboard_events_when_installed(registered, tmp_path):
    pytest.importorskip("tensorboard")
    run = train_from_config(make_config("train.steps=2", "train.grad_accum=1"), tmp_path / "run", progress=False)
    assert list((run / "tb").glob("events.out.tfevents.*"))


@pytest.mark.slow  # trains
def test_load_run_errors(registered, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.yaml: missing"):
        load_run(tmp_path / "empty")
    run = train_from_config(make_config("train.steps=2", "train.grad_accum=1"), tmp_path / "run", progress=False)
    ck = latest_checkpoint(run / "checkpoints")
    (ck / "ema.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(ValueError, match="ema.safetensors: cannot read safetensors"):
        load_run(run)
    (ck / "ema.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="ema.safetensors: missing"):
        load_run(run)
    cfg_text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(cfg_text.replace("num_classes: 3", "num_classes: 3\n  width: 16"))
    with pytest.raises(ValueError, match="has shape"):
        load_run(run, weights="model")
    (run / "config.yaml").write_text("model: [unclosed")
    with pytest.raises(ValueError, match=r"config\.yaml:1:\d+: not valid YAML"):
        load_run(run)
    (run / "config.yaml").write_text(cfg_text)
    for path in (run / "checkpoints").iterdir():
        import shutil
        shutil.rmtree(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_run(run)


def test_data_and_model_mismatch_errors(registered, tmp_path):
    with pytest.raises(ValueError, match=r"cannot denoise the data's images of shape \(1, 8, 8\)"):
        Trainer(make_config("model.channels=3"), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match=r"must be divisible by the number of processes|multiple of train.grad_accum"):
        make_config("train.batch_size=6", "train.grad_accum=4")


@pytest.mark.slow  # trains
def test_real_backbone_and_dataset(tmp_path):
    """The digits dataset and the U-Net, wired by registry name, train two steps."""
    cfg = config_from_dict({
        "data": {"name": "digits", "size": 8},
        "model": {"name": "unet", "in_channels": 1, "channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
                  "attention_levels": [], "head_channels": 16, "norm_groups": 8, "num_classes": 10},
        "condition": {"kind": "class"}, "train": {"steps": 2, "batch_size": 4, "save_every": 0},
        "sample": {"n": 10, "nfe": 2, "sampler": "euler"}})
    run = train_from_config(cfg, tmp_path / "run", progress=False)
    assert run_info(run) == {"step": 2, "image_shape": (1, 8, 8), "classes": [str(d) for d in range(10)]}
    assert (run / "samples.png").is_file()
    den, _ = load_run(run)
    assert isinstance(den.net, MODELS["unet"]) and (den.net.config.channels, den.net.config.num_classes) == (16, 10)
    x = torch.zeros(2, 1, 8, 8)
    a, b = den(x, torch.ones(2), torch.tensor([1, 2])), den(x, torch.ones(2), torch.tensor([1, 1]))
    assert a.shape == (2, 1, 8, 8)
    assert torch.allclose(a[0], b[0]) and not torch.equal(a[1], b[1])  # the label reaches the trained network


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "worker":
    torch.set_num_threads(1)
    MODELS["test_tiny"], DATASETS["test_synth"] = TinyNet, SynthImages  # this process is the worker, not a test
    trainer = Trainer(config_from_dict(__import__("yaml").safe_load(Path(sys.argv[2]).read_text())), sys.argv[3],
                      progress=False)
    print(f"rank={trainer.rank} world_size={trainer.world}", flush=True)
    trainer.fit()
