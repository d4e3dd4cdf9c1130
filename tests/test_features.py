import dataclasses
import json

import numpy as np
import pytest
import torch

from denoisekit.eval.features import (ClassifierConfig, as_images, cached_classifier,
                                      digits_feature_network, digits_labelled, extract_features, train_classifier)
from denoisekit.eval.inception import FIDInceptionV3, load_fid_inception

TINY = ClassifierConfig(image_size=8, width=4, feature_dim=8, epochs=1, batch_size=32)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    # shared with tests/test_fid.py: the digits network is trained once per session
    return tmp_path_factory.getbasetemp() / "denoisekit-cache"


@pytest.fixture(scope="module")
def digits_net(cache_dir):
    return digits_feature_network(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def small_digits():
    x, y = digits_labelled()
    return x[:200], y[:200]


# --- the digits feature network ----------------------------------------------------------------------

@pytest.mark.slow  # trains the digits feature network (shared cache)
def test_digits_network_accuracy_and_sizes(digits_net):
    from denoisekit.data.digits import DigitsDataset

    assert digits_net.info["test_accuracy"] >= 0.97  # measured 0.994 on 359 held-out digits
    assert digits_net.out_dim == 128
    for size in (8, 16, 32):
        ds = DigitsDataset(size=size, split="all")
        assert (digits_net.predict(ds.images) == ds.labels).double().mean() > 0.98
        assert extract_features(digits_net, ds.images[:5]).shape == (5, 128)


@pytest.mark.slow  # trains the digits feature network (shared cache)
def test_digits_network_loads_from_cache(digits_net, cache_dir):
    again = digits_feature_network(cache_dir=cache_dir)
    assert again.info["cache_status"] == "loaded" and again.info["cache"] == digits_net.info["cache"]
    for a, b in zip(digits_net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    meta = json.loads((cache_dir / "features" / digits_net.info["cache"].rsplit("/", 1)[1] / "meta.json").read_text())
    assert meta["info"]["test_accuracy"] == digits_net.info["test_accuracy"]


@pytest.mark.slow  # trains
def test_training_is_deterministic(small_digits):
    x, y = small_digits
    threads = torch.get_num_threads()
    a, b = train_classifier(x, y, 10, TINY), train_classifier(x, y, 10, TINY)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    c = train_classifier(x, y, 10, dataclasses.replace(TINY, seed=1))
    assert not torch.equal(a.heads[0].weight, c.heads[0].weight)
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()  # restored


@pytest.mark.slow  # trains
def test_corrupt_cache_is_retrained_with_a_warning(small_digits, tmp_path):
    x, y = small_digits
    first = cached_classifier("tiny", x, y, 10, TINY, cache_dir=tmp_path)
    assert first.info["cache_status"] == "trained"
    folder = tmp_path / "features" / first.info["cache"].rsplit("/", 1)[1]
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="unreadable"):
        again = cached_classifier("tiny", x, y, 10, TINY, cache_dir=tmp_path)
    assert again.info["cache_status"] == "trained"
    assert cached_classifier("tiny", x, y, 10, TINY, cache_dir=tmp_path).info["cache_status"] == "loaded"
    # a different config or different data is a different cache entry
    other = cached_classifier("tiny", x[:100], y[:100], 10, TINY, cache_dir=tmp_path)
    assert other.info["cache"] != first.info["cache"]


@pytest.mark.slow  # trains
def test_multi_head_labels_with_missing_values(small_digits):
    # e.g. the shapes attribute classifier: one head per attribute, -1 where an attribute is absent
    x, y = small_digits
    labels = torch.stack([y, y % 2], 1)
    labels[:20, 1] = -1
    model = train_classifier(x, labels, (10, 2), TINY)
    assert model.predict(x[:7]).shape == (7, 2)
    assert len(model.info["test_accuracy_per_head"]) == 2
    with pytest.raises(ValueError, match=r"labels must be \(200,\) or \(200, 2\)"):
        train_classifier(x, y, (10, 2), TINY)
    with pytest.raises(ValueError, match=r"values must be in \[0, 10\)"):
        train_classifier(x, y + 5, 10, TINY)


@pytest.mark.slow  # trains
def test_rgb_data_and_channel_mismatch():
    x = torch.rand(40, 3, 12, 12) * 2 - 1
    model = train_classifier(x, torch.arange(40) % 2, 2, TINY)
    assert model.in_channels == 3 and extract_features(model, x).shape == (40, 8)
    with pytest.raises(ValueError, match=r"expects \(B, 3, H, W\)"):
        model.features(torch.zeros(2, 1, 8, 8))


# --- image input handling ----------------------------------------------------------------------------

def test_as_images_conversions():
    u = np.zeros((2, 5, 6, 3), np.uint8)
    u[..., 0] = 255
    x = as_images(u)
    assert x.shape == (2, 3, 5, 6) and x.dtype == torch.float32
    assert x[:, 0].eq(1).all() and x[:, 1].eq(-1).all()
    assert as_images(np.zeros((2, 4, 4), np.uint8)).shape == (2, 1, 4, 4)
    f = torch.rand(2, 1, 4, 4) * 2 - 1
    assert torch.equal(as_images(f), f)
    assert torch.equal(as_images(f.double().numpy()), f)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 4, 4, 2), np.uint8), r"uint8 images must be \(N, H, W, C\) with C = 1 or 3"),
    (torch.zeros(2, 4, 4, 3), "channels last"),
    (torch.zeros(4, 4, 3), r"float images must be \(N, C, H, W\)"),
    (torch.full((2, 1, 4, 4), 255.0), r"must be in \[-1, 1\].*uint8"),
    (torch.zeros(2, 1, 4, 4, dtype=torch.int64), "got dtype torch.int64"),
    (torch.full((2, 1, 4, 4), float("nan")), "NaN"),
    (torch.zeros(0, 1, 4, 4), "at least one image"),
])
def test_as_images_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        as_images(bad)


@pytest.mark.slow  # trains the digits feature network (shared cache)
def test_digits_network_rejects_rgb(digits_net):
    with pytest.raises(ValueError, match=r"expects \(B, 1, H, W\)"):
        extract_features(digits_net, np.zeros((2, 16, 16, 3), np.uint8))


# --- Inception-v3 (architecture and loading; the real weights are not available offline) ------------

@pytest.fixture(scope="module")
def inception():
    torch.manual_seed(0)
    model = FIDInceptionV3().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so loading them is tested too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def test_inception_architecture(inception):
    # torchvision's inception_v3 has 27,161,264 parameters; minus AuxLogits (3,326,696), plus 8 more classes
    # (1008 in the 2015 graph: 8 * 2049) = 23,850,960: the standard FID weight file's tensors.
    assert sum(p.numel() for p in inception.parameters()) == 23_850_960
    # conv-BN units: stem 5 + Mixed_5* 3x7 + Mixed_6a 4 + Mixed_6b-e 4x10 + Mixed_7a 6 + Mixed_7b,c 2x9 = 94
    keys = [k for k in inception.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(keys) == 94 * 5 + 2 and "Mixed_7c.branch3x3dbl_3b.bn.running_var" in keys
    assert inception.fc.weight.shape == (1008, 2048)
    assert inception.Mixed_7c.max_pool and not inception.Mixed_7b.max_pool


@pytest.mark.slow  # a full-size Inception-v3 (~2 s)
def test_inception_loads_local_weights(inception, tmp_path):
    from safetensors.torch import save_file

    sd = {k: v for k, v in inception.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save(sd, tmp_path / "w.pth")
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = inception(x)
    assert expected.shape == (2, 2048) and (expected >= 0).all()
    for name in ("w.safetensors", "w.pth"):
        loaded = load_fid_inception(tmp_path / name)
        assert all(torch.equal(sd[k], v) for k, v in loaded.state_dict().items() if k in sd)
    with torch.no_grad():
        assert torch.allclose(loaded(x.expand(-1, 3, -1, -1)), expected)  # grey is repeated to RGB
    assert torch.allclose(extract_features(loaded, x), expected.double(), atol=1e-6)


@pytest.mark.slow  # a full-size Inception-v3 (~2 s)
def test_inception_weight_errors(inception, tmp_path):
    with pytest.raises(FileNotFoundError, match="not downloaded"):
        load_fid_inception(tmp_path / "missing.pth")
    sd = {k: v for k, v in inception.state_dict().items() if not k.endswith("num_batches_tracked")}
    bad = dict(sd)
    bad.pop("Mixed_5b.branch1x1.conv.weight")
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing keys.*Mixed_5b.branch1x1.conv.weight.*extra.weight"):
        load_fid_inception(tmp_path / "bad.pth")
    torch.save({**sd, "fc.weight": torch.zeros(1000, 2048)}, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match="fc.weight has shape"):
        load_fid_inception(tmp_path / "shape.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read"):
        load_fid_inception(tmp_path / "junk.safetensors")
    (tmp_path / "w.onnx").write_bytes(b"junk")
    with pytest.raises(ValueError, match="unsupported weights format"):
        load_fid_inception(tmp_path / "w.onnx")
