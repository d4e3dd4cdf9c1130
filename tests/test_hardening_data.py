"""Hardening of the image datasets (issue 19): truncated files found by the quick scan, undecodable files
skipped by the loader (deterministically, a bounded number), NaN in an .npz named by index."""

import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from denoisekit.cli import main
from denoisekit.data.folder import FolderDataset, max_undecodable
from denoisekit.data.npz import NpzDataset


def _noise(path, size=64, seed=0, **kw):
    """A random RGB image (incompressible, so a cut lands in the pixel data, not the header)."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, **kw)
    return path


def _cut(path, keep=0.6):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_quick_scan_catches_truncated_jpeg_and_gif(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.gif", "d.jpg", "e.bmp"):
        _noise(tmp_path / name, seed=len(name) + ord(name[0]))
    _cut(tmp_path / "b.jpg")
    _cut(tmp_path / "c.gif")
    _cut(tmp_path / "e.bmp")
    with open(tmp_path / "d.jpg", "ab") as f:  # bytes after the end-of-image marker: still a complete image
        f.write(b"\x00" * 64)
    with pytest.warns(UserWarning, match="skipped 3 unusable") as rec:
        ds = FolderDataset(tmp_path, size=8)
    assert ds.files == ["a.jpg", "d.jpg"]
    reasons = dict(ds.skipped)
    for name in ("b.jpg", "c.gif", "e.bmp"):
        assert str(tmp_path / name) in str(rec[0].message)
        assert "truncated" in reasons[str(tmp_path / name)]


def _undecodable_tiffs(root, n_good, n_bad):
    """TIFFs whose pixel data is cut: they pass the quick scan (header and verify) and fail to decode."""
    for i in range(n_good + n_bad):
        _noise(root / f"{i:02d}.tif", size=16, seed=i)
        if i >= n_good:
            _cut(root / f"{i:02d}.tif")


def test_loader_replaces_an_undecodable_file_by_the_next_one(tmp_path):
    for i in range(4):
        _noise(tmp_path / f"{i}.jpg", seed=i)
    ds, resumed = FolderDataset(tmp_path, size=8), FolderDataset(tmp_path, size=8)
    _cut(tmp_path / "1.jpg")  # broken after the scan (or a format the scan cannot check)
    _cut(tmp_path / "3.jpg")
    with pytest.warns(UserWarning, match=re.escape(str(tmp_path / "1.jpg"))):
        item = ds[1]
    assert item["path"] == str(tmp_path / "2.jpg") and torch.equal(item["image"], ds[2]["image"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per file
        assert ds[1]["path"] == str(tmp_path / "2.jpg")
    with pytest.warns(UserWarning, match=re.escape(str(tmp_path / "3.jpg"))):
        assert ds[3]["path"] == str(tmp_path / "0.jpg")  # wraps around
    with pytest.warns(UserWarning):  # another process (a resumed run, a worker) picks the same substitutes
        assert [resumed[i]["path"] for i in range(4)] == [str(tmp_path / f"{i}.jpg") for i in (0, 2, 2, 0)]


def test_loader_stops_after_too_many_undecodable_files(tmp_path):
    assert max_undecodable(100) == 10 and max_undecodable(5000) == 50
    _undecodable_tiffs(tmp_path, n_good=2, n_bad=11)
    ds = FolderDataset(tmp_path, size=8)
    assert len(ds) == 13  # the scan cannot see it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError) as err:
            ds[2]
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message and "11 files" in message and "verify: full" in message


TRAIN_CONFIG = """\
data: {{name: folder, root: {root}, size: 8, channels: 1, num_workers: {workers}}}
model: {{name: unet, in_channels: 1, channels: 8, channel_mult: [1, 2], num_res_blocks: 1, attention_levels: [],
        mid_attention: false, head_channels: 8, norm_groups: 4}}
process: {{name: edm, prediction: edm}}
train: {{steps: 2, batch_size: 6, save_every: 0, log_every: 1}}
sample: {{n: 0, every: 0}}
"""


def _config(tmp_path, root, workers):
    config = tmp_path / "folder.yaml"
    config.write_text(TRAIN_CONFIG.format(root=root, workers=workers))
    return str(config)


@pytest.mark.slow  # trains 2 steps
def test_train_survives_a_truncated_jpeg_and_an_undecodable_tiff(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for i in range(4):
        _noise(root / f"{i}.jpg", seed=i)
    _cut(root / "1.jpg")  # the quick scan finds it
    _noise(root / "9.tif", size=16, seed=9)
    _cut(root / "9.tif")  # the scan cannot see it: the loader skips it
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert main(["train", _config(tmp_path, root, 0), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    said = "\n".join(str(w.message) for w in rec)
    assert str(root / "1.jpg") in said and str(root / "9.tif") in said
    assert (tmp_path / "run" / "checkpoints").is_dir()


@pytest.mark.slow  # trains 2 steps
def test_train_stops_in_one_line_when_most_files_do_not_decode(tmp_path, capsys):
    root = tmp_path / "images"
    root.mkdir()
    _undecodable_tiffs(root, n_good=1, n_bad=11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # in a DataLoader worker (num_workers: 1), re-raised in this process
        assert main(["train", _config(tmp_path, root, 1), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("denoisekit: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert "11 files" in err and str(root) in err


def test_npz_nan_names_the_first_bad_index_and_the_count(tmp_path):
    images = np.zeros((6, 4, 4, 1), np.float32)
    images[3, 1, 2] = np.nan
    images[5] = np.inf
    np.savez(tmp_path / "x.npz", images=images)
    with pytest.raises(ValueError, match=r"NaN or inf, first at index 3 \(2 of 6 images\)"):
        NpzDataset(tmp_path / "x.npz")
