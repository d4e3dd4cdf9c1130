"""Config: YAML round trips, typed dotted overrides, validation errors that name the key, presets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from denoisekit.train.config import (DataConfig, OptimConfig, TrainConfig, apply_overrides, config_from_dict,
    config_to_dict, config_to_yaml, load_config, save_config)
from denoisekit.train.build import build_dataset, build_denoiser
from denoisekit.options import option_schema, parse_value
from denoisekit.data import IMAGE_DATASETS as DATASETS
from denoisekit.losses import DiffusionLoss
from denoisekit.models import MODELS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class NetConfig:
    channels: int = 8
    channel_mult: tuple[int, ...] = (1, 2)
    blocks: int | tuple[int, ...] = 1
    num_classes: int | None = None
    act: str = "silu"

    def __post_init__(self):
        if self.channels % 4:
            raise ValueError(f"NetConfig.channels must be a multiple of 4, got {self.channels}")


class Net:
    config_class = NetConfig

    def __init__(self, config: NetConfig):
        self.config = config


def make_data(n: int = 10, scale: float = 1.0, **extra):
    """A factory without a config dataclass: options are typed by its signature (open: **extra)."""
    return [{"image": n * scale, **extra}]


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    monkeypatch.setitem(MODELS, "cfg_net", Net)
    monkeypatch.setitem(DATASETS, "cfg_data", make_data)


BASE = {"data": {"name": "cfg_data"}, "model": {"name": "cfg_net"}}


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = config_from_dict({**BASE, "model": {"name": "cfg_net", "channels": 12, "channel_mult": [1, 2, 4],
                                              "num_classes": 10},
                            "condition": {"kind": "class"}, "train": {"mixed_precision": "bf16"},
                            "loss": {"noise_levels": "lognormal", "weighting": "edm"}})
    assert cfg.model.options == {"channels": 12, "channel_mult": (1, 2, 4), "num_classes": 10}
    assert cfg.loss == DiffusionLoss("lognormal", "edm") and cfg.num_classes == 10
    save_config(cfg, tmp_path / "c.yaml")
    text = (tmp_path / "c.yaml").read_text()
    assert "channel_mult: [1, 2, 4]" in text and "model:\n  name: cfg_net\n" in text
    assert load_config(tmp_path / "c.yaml") == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_overrides_are_typed_by_the_declared_field():
    d = apply_overrides(BASE, [
        "model.channels=16", "model.channel_mult=[1,1,2]", "model.blocks=[1,2]", "model.num_classes=none",
        "model.act=123", "optim.lr=1e-3", "optim.betas=[0.9, 0.99]", "train.mixed_precision=bf16",
        "condition.dropout=0", "data.n=5", "data.scale=2", "data.anything=[1, x]", "process.name=edm",
        "process.sigma_max=40", "loss.gamma=1", "sample.cfg_scale=1",
    ])
    cfg = config_from_dict(d)
    assert cfg.model.options == {"channels": 16, "channel_mult": (1, 1, 2), "blocks": (1, 2), "num_classes": None,
                                 "act": "123"}
    assert cfg.optim.lr == 1e-3 and cfg.optim.betas == (0.9, 0.99)
    assert cfg.train.mixed_precision == "bf16" and cfg.condition.dropout == 0.0
    assert cfg.data.options == {"n": 5, "scale": 2.0, "anything": [1, "x"]}  # **extra: kept as YAML gave it
    assert cfg.process.options == {"sigma_max": 40.0} and cfg.loss.gamma == 1.0
    assert build_dataset(cfg) == [{"image": 10.0, "anything": [1, "x"]}]
    assert isinstance(build_denoiser(config_from_dict({"model": {"name": "mlp"}, "data": BASE["data"]})).net,
                      MODELS["mlp"])


@pytest.mark.parametrize("override, message", [
    ("model.chanels=16", "unknown key 'model.chanels'; valid keys at 'model': act, blocks, channel_mult, "
                         "channels, name, num_classes"),
    ("modle.channels=16", "unknown key 'modle'; valid keys at '<top level>': condition, controlnet, data, dreambooth, ema, fewstep, init, latent, lcm, lora, loss, model, optim, process, sample, teacher, textual_inversion, train"),
    ("train.stesp=3", "valid keys at 'train': batch_size, device, grad_accum"),
    ("loss.weight=snr", "valid keys at 'loss': gamma, noise_levels, p_mean, p_std, weighting"),
    ("process.sigma_max=40", "unknown key 'process.sigma_max'; valid keys at 'process': beta_end"),
    ("model.channels=abc", "model.channels: expected an integer, got 'abc'"),
    ("model.channels=10", r"model \(cfg_net\): NetConfig.channels must be a multiple of 4"),
    ("model.channel_mult=[1,x]", r"model.channel_mult\[1\]: expected an integer"),
    ("train.steps=2.5", "train.steps: expected an integer, got 2.5"),
    ("train.steps=0", "train.steps must be >= 1, got 0"),
    ("train.mixed_precision=fp16", "train.mixed_precision: unknown value 'fp16'; allowed: no, bf16"),
    ("process.prediction=noise", "process.prediction: unknown value 'noise'; allowed: eps, x0, v, flow"),
    ("loss.weighting=bad", "loss.weighting: unknown value 'bad'; allowed: simple, snr, min_snr"),
    ("sample.sampler=nope", "sample.sampler: unknown sampler 'nope'; allowed: consistency, ddim, ddpm"),
    ("model.name=nope", "model.name: unknown model 'nope'; allowed: "),
    ("optim.betas=[0.9]", "optim.betas: expected 2 values"),
    ("optim.lr=-1", "optim.lr must be > 0"),
    ("train.batch_size=10", r"train.batch_size \(10\) must be a multiple of train.grad_accum \(4\)"),
    ("condition.kind=class", "condition.kind is 'class' but model.num_classes is not set"),
    ("condition.kind=sound", "condition.kind: unknown condition kind 'sound'; allowed: class, embedding, image, none, text"),
    ("condition.dropout=1", r"condition.dropout must be in \[0, 1\)"),
    ("condition.kind=text", "model.context_dim must be 384 \\(the encoder's width\\), got None"),
    ("sample.prompts=[a cat]", "sample.prompts needs condition.kind: text"),
    ("sample.cfg_scale=3", "sample.cfg_scale=3.0 needs condition.kind class or text"),
    ("model.channels", "expected KEY=VALUE"),
    ("model.channel_mult.0=2", "expected SECTION.KEY"),
])
def test_errors_name_the_key(override, message):
    base = {**BASE, "train": {"grad_accum": 4}}
    with pytest.raises(ValueError, match=message):
        config_from_dict(apply_overrides(base, [override]))


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml:2:1: not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="bad.yaml: expected a mapping of sections"):
        load_config(bad)
    bad.write_text("data: {name: cfg_data}\nmodel: {name: cfg_net}\ntrain: 3\n")
    with pytest.raises(ValueError, match="bad.yaml: train: expected a mapping"):
        load_config(bad)
    bad.write_text("data: {name: cfg_data}\nmodel: {name: cfg_net, channels: 6}\n")
    with pytest.raises(ValueError, match="bad.yaml: model"):
        load_config(bad)


def test_yaml_quirks_and_values():
    # YAML 1.1 reads bare `no` as false and `1e-4` as a string: both mean what the user wrote
    cfg = config_from_dict({**BASE, "train": {"mixed_precision": False}, "optim": {"lr": "1e-4"}})
    assert cfg.train.mixed_precision == "no" and cfg.optim.lr == 1e-4
    assert parse_value("null", int | None, "k") is None and parse_value("None", int | None, "k") is None
    assert parse_value("007", str, "k") == "007" and parse_value("true", bool, "k") is True
    with pytest.raises(ValueError, match="k: expected true/false"):
        parse_value("maybe", bool, "k")


def test_sections_validate_when_built_in_code():
    assert OptimConfig(betas=[0.5, 0.6]).betas == (0.5, 0.6)  # list -> tuple
    with pytest.raises(ValueError, match="train.steps: expected an integer, got '3'"):
        TrainConfig(steps="3")
    with pytest.raises(ValueError, match="data.name: unknown dataset 'nope'"):
        DataConfig(name="nope")
    with pytest.raises(ValueError, match="unknown key 'data.bogus'; valid keys at 'data': n, name, num_workers"):
        _strict_data()


def _strict_data():
    """A dataset class with a config dataclass rejects keys it does not declare."""
    @dataclass(frozen=True)
    class C:
        n: int = 1

    class D(list):
        Config = C

    DATASETS["cfg_strict"] = D
    try:
        return DataConfig(name="cfg_strict", options={"bogus": 1})
    finally:
        del DATASETS["cfg_strict"]


def test_option_schema():
    schema, is_open, cls = option_schema(Net)
    assert cls is NetConfig and not is_open and schema["blocks"] == int | tuple[int, ...]
    schema, is_open, cls = option_schema(make_data)
    assert cls is None and is_open and schema == {"n": int, "scale": float}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_presets_are_valid(path):
    import yaml

    raw = yaml.safe_load(path.read_text())
    missing = [f"{s}.name={raw[s]['name']}" for s, reg in (("data", DATASETS), ("model", MODELS))
               if raw[s]["name"] not in reg]
    if missing:
        pytest.skip(f"not registered yet: {', '.join(missing)}")
    cfg = load_config(path)
    assert load_config(path, ["train.steps=7"]).train.steps == 7
    assert config_from_dict(config_to_dict(cfg)) == cfg and config_to_yaml(cfg)


def test_expected_presets_exist():
    assert {"digits-unet.yaml", "digits-dit.yaml", "shapes-unet.yaml", "folder-template.yaml"} <= {
        p.name for p in CONFIGS.glob("*.yaml")}


def test_configs_from_before_the_condition_section_still_load():
    old = {**BASE, "model": {"name": "cfg_net", "num_classes": 10},
           "train": {"conditioning": "class", "label_dropout": 0.2, "steps": 7}}
    with pytest.warns(DeprecationWarning, match="now condition.kind / condition.dropout"):
        cfg = config_from_dict(old)
    assert cfg.condition.kind == "class" and cfg.condition.dropout == 0.2 and cfg.train.steps == 7
