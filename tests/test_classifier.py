"""Noisy-image classifier (models/classifier.py) and its training (train/classifier.py): shapes, the VE-frame
wrapper's inputs, guidance through a network under no_grad, training on digits, save/load, config, errors."""

import json
from pathlib import Path

import pytest
import torch

from denoisekit import Denoiser, get_process
from denoisekit.guidance import ClassifierGuidance
from denoisekit.models.classifier import NoiseClassifier, NoiseClassifierConfig, NoisyClassifier
from denoisekit.train.classifier import (ClassifierRunConfig, classifier_config_from_dict, classifier_config_to_dict,
                                         load_classifier, load_classifier_config, run_train_classifier, save_classifier,
                                         train_noise_classifier)

CONFIG = Path(__file__).parents[1] / "configs" / "classifier" / "digits.yaml"
TINY = dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, head_channels=8, norm_groups=4)


@pytest.mark.parametrize("kw, shape", [
    (dict(in_channels=1, num_classes=10), (2, 1, 8, 8)),
    (dict(in_channels=3, num_classes=4, channel_mult=(1, 2, 2)), (3, 3, 12, 20)),   # stride 4, non-square
    (dict(in_channels=2, num_classes=2, attention=False), (1, 2, 6, 2)),
])
def test_shapes(kw, shape):
    net = NoiseClassifier(**(TINY | kw))
    assert net(torch.randn(shape), torch.rand(shape[0])).shape == (shape[0], kw["num_classes"])
    assert net(torch.randn(shape), 0.5).shape == (shape[0], kw["num_classes"])  # a scalar time
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the zero-initialised residual branches (which carry the time) get weights
        for p in net.parameters():
            if not p.abs().sum():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    x, time = torch.randn(shape, generator=g), torch.rand(shape[0], generator=g)
    out = net(x, time)
    assert not torch.allclose(out, net(x, time + 0.3))  # the noise level reaches the logits
    torch.testing.assert_close(net(x[-1:], time[-1:]), out[-1:])  # per sample: no batch statistics


def test_model_errors():
    net = NoiseClassifier(**(TINY | dict(in_channels=1, channel_mult=(1, 2, 2))))
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 1, 6, 8), 0.5)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        net(torch.randn(1, 3, 8, 8), 0.5)
    with pytest.raises(ValueError, match="head_channels"):
        NoiseClassifierConfig(channels=12, head_channels=16)
    with pytest.raises(ValueError, match="num_classes"):
        NoiseClassifierConfig(num_classes=1)
    with pytest.raises(ValueError, match="not both"):
        NoiseClassifier(NoiseClassifierConfig(), channels=8)
    assert NoiseClassifierConfig(channel_mult=[1, 2]).channel_mult == (1, 2)


class Spy(torch.nn.Module):
    """Records the (x, time) it is called with."""

    def __init__(self, out_dim=None):
        super().__init__()
        self.seen, self.out_dim = [], out_dim

    def forward(self, x, time, cond=None):
        self.seen.append((x, time))
        return x[:, :3].flatten(1)[:, :3] if self.out_dim else x


@pytest.mark.parametrize("process, time_input", [("ddpm", "model"), ("vp_cosine", "t"), ("edm", "log_sigma"),
                                                 ("flow", "model")])
def test_wrapper_inputs_match_the_denoiser(process, time_input):
    """The classifier sees exactly what a Denoiser's network would: x = alpha y and the same time."""
    proc = get_process(process)
    y, sigma = torch.randn(3, 1, 2, 2, dtype=torch.float64), torch.tensor([0.05, 1.0, 7.0], dtype=torch.float64)
    clf_net, den_net = Spy(out_dim=3), Spy()
    NoisyClassifier(clf_net, proc, time_input)(y, sigma)
    Denoiser(den_net, proc, "x0", time_input=time_input)(y, sigma)
    (xc, tc), (xd, td) = clf_net.seen[0], den_net.seen[0]
    assert torch.equal(xc, xd) and torch.equal(tc, td)


def test_guidance_through_a_network_under_no_grad():
    torch.manual_seed(0)
    clf = NoisyClassifier(NoiseClassifier(**(TINY | dict(in_channels=1, num_classes=3))), get_process("vp_cosine"))
    clf.eval().requires_grad_(False)

    def den(y, sigma, cond=None):
        return 0.5 * y

    y, labels = torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    sigma = torch.full((4,), 0.8, dtype=torch.float64)
    with torch.no_grad():
        out = ClassifierGuidance(den, clf, 2.0)(y, sigma, labels)
    with torch.enable_grad():
        y_in = y.clone().requires_grad_(True)
        log_p = torch.log_softmax(clf(y_in, sigma), 1).gather(1, labels[:, None]).sum()
        (grad,) = torch.autograd.grad(log_p, y_in)
    torch.testing.assert_close(out, 0.5 * y + 2.0 * 0.8**2 * grad)
    assert not torch.allclose(out, 0.5 * y)
    assert all(p.grad is None for p in clf.parameters())


@pytest.mark.slow  # ~7 s of CPU on one idle thread; ~20 s on the shared, loaded machine
def test_train_digits_accuracy():
    """~200 steps of batch 64 on CPU: the held-out accuracy is >= 0.93 at low noise
    (measured 0.978 at sigma 0.05 and 0.2) and near chance at sigma = 20, where the digits are gone."""
    config = load_classifier_config(CONFIG, ["model.channels=16", "model.head_channels=16", "train.batch_size=64",
                                             "train.steps=200", "train.eval_sigmas=[0.05, 0.5, 20.0]"])
    clf, acc = train_noise_classifier(config)
    assert list(acc) == [0.05, 0.5, 20.0]
    assert acc[0.05] >= 0.93 and acc[0.5] >= 0.8 and acc[20.0] <= 0.3
    assert clf.info["n_test"] == 270 and not clf.training


@pytest.fixture(scope="module")
def tiny_run():
    config = load_classifier_config(CONFIG, ["model.channels=8", "model.head_channels=8", "model.attention=false",
                                             "train.steps=6", "train.batch_size=16", "train.eval_sigmas=[0.1]"])
    return config, *train_noise_classifier(config)


@pytest.mark.slow  # trains (the module's tiny run)
def test_deterministic(tiny_run):
    config, clf, acc = tiny_run
    clf2, acc2 = train_noise_classifier(config)
    assert acc == acc2
    for (k, a), b in zip(clf.state_dict().items(), clf2.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.slow  # trains (the module's tiny run)
def test_save_load_round_trip(tiny_run, tmp_path):
    config, clf, acc = tiny_run
    save_classifier(tmp_path / "clf", clf, config, acc)
    files = sorted(p.name for p in (tmp_path / "clf").iterdir())
    assert files == ["classifier.json", "config.yaml", "model.safetensors"]
    loaded = load_classifier(tmp_path / "clf")
    y, sigma = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    assert torch.equal(loaded(y, sigma), clf(y, sigma))
    assert loaded.info["config"] == config and loaded.info["accuracy"] == acc and not loaded.training
    assert load_classifier_config(tmp_path / "clf" / "config.yaml") == config  # the YAML copy reruns the run


@pytest.mark.slow  # trains (the module's tiny run)
def test_load_errors(tiny_run, tmp_path):
    config, clf, _ = tiny_run
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_classifier(tmp_path / "missing")
    out = save_classifier(tmp_path / "clf", clf, config)
    meta = json.loads((out / "classifier.json").read_text())
    (out / "classifier.json").write_text(json.dumps({**meta, "format": "other/1"}))
    with pytest.raises(ValueError, match="format"):
        load_classifier(out)
    meta["config"]["model"]["channels"] = 16  # weights no longer match the config
    (out / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="shape"):
        load_classifier(out)
    (out / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        load_classifier(out)


def test_config():
    config = load_classifier_config(CONFIG)
    assert config.process.name == "edm" and config.model.channel_mult == (1, 2) and config.optim.schedule == "cosine"
    assert classifier_config_from_dict(classifier_config_to_dict(config)) == config
    over = load_classifier_config(CONFIG, ["train.steps=5", "model.channel_mult=[1, 2, 2]", "optim.lr=1e-4",
                                           "process.sigma_max=40", "data.size=16"])
    assert (over.train.steps, over.model.channel_mult, over.optim.lr) == (5, (1, 2, 2), 1e-4)
    assert over.process.options == {"sigma_max": 40.0} and over.data.options["size"] == 16
    assert classifier_config_from_dict({"optim": {"lr": 1e-3}}).optim.schedule == "cosine"  # classifier defaults
    assert ClassifierRunConfig().optim.weight_decay == 0.01


@pytest.mark.parametrize("overrides, match", [
    (["model.widht=3"], "valid keys at 'model'"),
    (["train.stepz=3"], "valid keys at 'train'"),
    (["oops.x=1"], "top level"),
    (["train.steps"], "SECTION.KEY=VALUE"),
    (["train.steps=many"], "integer"),
    (["train.noise_levels=gauss"], "uniform"),
    (["process.name=nope"], "allowed"),
    (["train.eval_sigmas=[0.0]"], "eval_sigmas"),
])
def test_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_classifier_config(CONFIG, overrides)


@pytest.mark.parametrize("overrides, match", [
    (["model.in_channels=3"], "in_channels=3"),
    (["model.num_classes=5"], "num_classes=5"),
    (["model.channel_mult=[1, 2, 2, 2, 2]"], "stride 16"),
    (["train.eval_sigmas=[100.0]"], "outside the process's range"),
])
def test_training_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        train_noise_classifier(load_classifier_config(CONFIG, ["train.steps=1", *overrides]))


@pytest.mark.slow  # trains
def test_run_train_classifier(tmp_path, capsys):
    out = run_train_classifier(CONFIG, tmp_path / "run", ["model.channels=8", "model.head_channels=8",
                                                          "train.steps=2", "train.batch_size=8",
                                                          "train.eval_sigmas=[0.1, 1.0]"])
    assert set(out["accuracy"]) == {0.1, 1.0} and (tmp_path / "run" / "model.safetensors").is_file()
    assert "sigma 0.1" in capsys.readouterr().out
    assert load_classifier(tmp_path / "run").info["accuracy"] == out["accuracy"]
