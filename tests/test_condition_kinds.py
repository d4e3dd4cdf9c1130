"""Condition kinds (denoisekit.conditioning): runs combining kinds (``condition.kind: [class, image]``), clashes
between kinds, and the ``embedding`` kind with the datasets that supply embeddings (digits, folder)."""

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from denoisekit.conditioning import (CONDITIONS, ClassCondition, ConditionKind, EmbeddingCondition,
                                     ImageConditionConfig, collate, condition_kind)
from denoisekit.data.digits import DigitsDataset
from denoisekit.data.folder import FolderDataset
from denoisekit.train.build import build_model
from denoisekit.train.config import apply_overrides, config_from_dict, config_to_dict
from denoisekit.train.run import load_run
from denoisekit.train.trainer import train_from_config

UNET = {"name": "unet", "channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [1],
        "head_channels": 16, "norm_groups": 8}
CLASS_IMAGE = {
    "data": {"name": "digits", "size": 8},
    "model": {**UNET, "in_channels": 1, "concat_channels": 2, "num_classes": 10},
    "condition": {"kind": ["class", "image"], "dropout": 0.5, "task": "super_resolution", "factor": 2},
    "train": {"steps": 2, "batch_size": 8, "save_every": 0},
    "sample": {"n": 4, "nfe": 2, "sampler": "euler"},
}
EMBEDDING = {
    "data": {"name": "digits", "size": 8, "embedding_dim": 16},
    "model": {**UNET, "in_channels": 1, "context_dim": 16},
    "condition": {"kind": "embedding", "dropout": 0.2},
    "train": {"steps": 3, "batch_size": 8, "save_every": 0},
    "sample": {"n": 4, "nfe": 2, "sampler": "euler", "cfg_scale": 2.0},
}


def gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


# ----------------------------------------------------------------------------------------------- composites


def test_a_run_may_combine_kinds():
    cfg = config_from_dict(CLASS_IMAGE)
    assert cfg.condition.kind == ("class", "image")
    _, image_opts = cfg.condition_options().split()
    assert image_opts == ImageConditionConfig(task="super_resolution", factor=2)
    assert config_to_dict(cfg)["condition"]["kind"] == ["class", "image"]  # written back as a YAML list
    assert config_from_dict(config_to_dict(cfg)) == cfg
    one = {**CLASS_IMAGE, "condition": {"kind": "class"}, "model": {**UNET, "in_channels": 1, "num_classes": 10}}
    both = config_from_dict(apply_overrides(one, ["condition.kind=[class,image]", "condition.task=colorize",
                                                  "model.concat_channels=1"]))
    assert both.condition.kind == ("class", "image") and both.condition.options == {"task": "colorize"}
    with pytest.raises(ValueError, match="condition.kind is 'class' but model.num_classes is not set"):
        config_from_dict(apply_overrides(CLASS_IMAGE, ["model.num_classes=null"]))
    with pytest.raises(ValueError, match="condition.kind: unknown condition kind 'sound'"):
        config_from_dict(apply_overrides(CLASS_IMAGE, ["condition.kind=[class,sound]"]))
    with pytest.raises(ValueError, match="unknown key 'condition.encoder'"):
        config_from_dict(apply_overrides(CLASS_IMAGE, ["condition.encoder=tokens"]))


def test_a_composite_merges_its_kinds_conditions():
    ds = DigitsDataset(size=8)
    kind = condition_kind(["class", "image"])
    assert kind.fields == ("label",) and kind.keys == ("labels", "concat") and kind.guidable
    opts = kind.Config(task="super_resolution", factor=2)
    cond = kind(opts, dropout=0.5, num_classes=10, image_shape=(1, 8, 8))
    batch = collate([ds[i] for i in range(8)], kind.fields)
    out = cond.training(batch, gens(8), "cpu")
    assert set(out) == {"labels", "concat"} and out["concat"].shape == (8, 2, 8, 8)
    # each kind draws from the per-sample generators in list order: the labels are the class kind's alone
    alone = ClassCondition(dropout=0.5, num_classes=10).training(batch, gens(8), "cpu")
    assert torch.equal(out["labels"], alone) and (alone == 10).any()
    view = cond.preview(16, ds, "cpu", seed=3)
    assert view.n == 4 and set(view.cond) == {"labels", "concat"} and view.grid(torch.zeros(4, 1, 8, 8)).shape[0] == 12


def test_kinds_that_claim_one_key_or_option_cannot_be_combined(monkeypatch):
    with pytest.raises(ValueError, match="condition kinds 'class' and 'class' both claim the condition key 'labels'"):
        config_from_dict(apply_overrides(CLASS_IMAGE, ["condition.kind=[class,class]"]))

    class Channels(ConditionKind):
        kind, keys = "channels", ("concat",)

    class Task(ConditionKind):
        kind, keys = "task", ("control",)

        @dataclass(frozen=True)
        class Config:
            task: str = "edges"

    monkeypatch.setitem(CONDITIONS, "channels", Channels)
    monkeypatch.setitem(CONDITIONS, "task", Task)
    with pytest.raises(ValueError, match="kinds 'image' and 'channels' both claim the condition key 'concat'"):
        condition_kind(["image", "channels"])
    with pytest.raises(ValueError, match="condition kinds 'image' and 'task' both have the option 'task'"):
        config_from_dict(apply_overrides(CLASS_IMAGE, ["condition.kind=[image,task]"]))
    assert condition_kind(["class", "task"]).keys == ("labels", "control")


# ----------------------------------------------------------------------------------------------- embedding


def test_digits_embeddings_are_a_fixed_random_projection_of_the_label():
    ds = DigitsDataset(size=8, embedding_dim=6)
    by_label = {}
    for i in range(40):
        item = ds[i]
        assert item["embedding"].shape == (6,) and item["embedding"].dtype == torch.float32
        prev = by_label.setdefault(int(item["label"]), item["embedding"])
        assert torch.equal(prev, item["embedding"])  # the same vector for every image of a digit
    assert len({tuple(v.tolist()) for v in by_label.values()}) == len(by_label)
    assert torch.equal(DigitsDataset(size=8, embedding_dim=6)[0]["embedding"], ds[0]["embedding"])  # seeded
    assert not torch.equal(DigitsDataset(size=8, embedding_dim=6, embedding_seed=1)[0]["embedding"], ds[0]["embedding"])
    assert DigitsDataset(size=8, embedding_dim=6, embedding_length=3)[0]["embedding"].shape == (3, 6)
    assert "embedding" not in DigitsDataset(size=8)[0]
    with pytest.raises(ValueError, match="embedding_length needs embedding_dim"):
        DigitsDataset(embedding_length=2)


def _images(root, names):
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (40 * i, 0, 0)).save(root / name)


def test_folder_embeddings_from_an_npz_or_the_metadata(tmp_path):
    root = tmp_path / "photos"
    _images(root, ["a.png", "sub/b.png"])
    vectors = {"a.png": np.arange(3, dtype=np.float32), "sub/b.png": np.ones(3, np.float32)}
    np.savez(tmp_path / "photos.npz", **vectors)  # beside the folder, keyed by file name
    ds = FolderDataset(root, size=4, embeddings=str(tmp_path / "photos.npz"))
    assert ds.files == ["a.png", "sub/b.png"]
    assert ds[0]["embedding"].tolist() == [0, 1, 2] and ds[1]["embedding"].tolist() == [1, 1, 1]
    np.savez(tmp_path / "part.npz", **{"a.png": vectors["a.png"]})
    with pytest.raises(ValueError, match=r"part.npz: no embedding for 1 image\(s\): sub/b.png"):
        FolderDataset(root, size=4, embeddings=str(tmp_path / "part.npz"))
    np.savez(tmp_path / "ragged.npz", **{"a.png": np.zeros(3), "sub/b.png": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="embeddings must all have one shape"):
        FolderDataset(root, size=4, embeddings=str(tmp_path / "ragged.npz"))

    rows = [{"file_name": "a.png", "text": "red", "clip": [[0.5, 1.0], [2.0, 3.0]]},
            {"file_name": "sub/b.png", "text": "black", "clip": [[1.0, 1.0], [0.0, 0.0]]}]
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = FolderDataset(root, size=4, embedding_key="clip")
    assert ds[0]["embedding"].shape == (2, 2) and ds[0]["embedding"][0].tolist() == [0.5, 1.0]
    with pytest.raises(ValueError, match="key 'emb': no embedding for 2 image"):
        FolderDataset(root, size=4, embedding_key="emb")
    with pytest.raises(ValueError, match="not both"):
        FolderDataset(root, size=4, embedding_key="clip", embeddings=str(tmp_path / "photos.npz"))


def test_embedding_kind_dropout_and_checks():
    kind = EmbeddingCondition(dropout=0.5)
    emb = [torch.randn(2, 4) for _ in range(16)]
    whole = kind.training({"embedding": emb}, gens(16), "cpu")["embedding"]
    halves = torch.cat([kind.training({"embedding": emb[:8]}, gens(8), "cpu")["embedding"],
                        kind.training({"embedding": emb[8:]}, gens(8, 8), "cpu")["embedding"]])
    assert torch.equal(whole, halves)  # per-sample draws: independent of the batch
    dropped = [i for i in range(16) if not whole[i].any()]
    assert 0 < len(dropped) < 16 and all(torch.equal(whole[i], emb[i]) for i in range(16) if i not in dropped)
    with pytest.raises(ValueError, match="condition.kind is 'embedding' but model.context_dim is not set"):
        config_from_dict(apply_overrides(EMBEDDING, ["model.context_dim=null"]))
    with pytest.raises(ValueError, match=r"model.context_dim=16 \(cross-attention\) needs condition.kind: text or "
                                         "embedding"):
        config_from_dict(apply_overrides(EMBEDDING, ["condition.kind=none", "sample.cfg_scale=1"]))
    cfg = config_from_dict(apply_overrides(EMBEDDING, ["data.embedding_dim=8"]))
    ds = DigitsDataset(size=8, embedding_dim=8)
    with pytest.raises(ValueError, match=r"yields embeddings of shape \(8,\); condition.kind 'embedding' needs \(D,\) "
                                         r"or \(L, D\) with D = model.context_dim = 16"):
        EmbeddingCondition().check_data(ds, ds[0], cfg)
    net = build_model(config_from_dict(EMBEDDING))  # no wrapper: the backbone reads the embedding itself
    assert type(net).__name__ == "UNet"


@pytest.mark.slow  # trains
def test_an_embedding_model_trains_samples_and_reads_its_embedding(tmp_path):
    run = train_from_config(config_from_dict(EMBEDDING), tmp_path / "run", progress=False)
    assert (run / "samples.png").is_file()  # the preview grid: rows of dataset embeddings, guided (cfg 2)
    den, _ = load_run(run)
    e = DigitsDataset(size=8, embedding_dim=16).embeddings
    x, sigma = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.ones(2)
    with torch.no_grad():
        a = den(x, sigma, {"embedding": e[[1, 7]]})
        b = den(x, sigma, {"embedding": e[[3, 7]]})
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])  # the embedding reaches the network


@pytest.mark.slow  # trains
def test_a_class_and_image_model_trains(tmp_path):
    run = train_from_config(config_from_dict(CLASS_IMAGE), tmp_path / "run", progress=False)
    assert (run / "samples.png").is_file()
    den, _ = load_run(run)
    with pytest.raises(ValueError, match="concat"):
        den(torch.zeros(1, 1, 8, 8), torch.ones(1), {"labels": torch.tensor([3])})  # it needs its input image
