"""Image datasets: digits, shapes, folder (with awkward files), npz. Files are made in tmp_path."""

import json
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from denoisekit.data.digits import DigitsDataset
from denoisekit.data.folder import FolderDataset
from denoisekit.data.npz import NpzDataset
from denoisekit.data.shapes import COLOURS, KINDS, SIZES, ShapesDataset, edge_map, region_phrase
from denoisekit.data.transforms import tensor_to_uint8, uint8_to_tensor

# ----------------------------------------------------------------------------------------------- digits


def test_digits_split_is_deterministic_disjoint_and_complete():
    train, test = DigitsDataset(split="train"), DigitsDataset(split="test")
    assert len(train) + len(test) == 1797 and 170 <= len(test) <= 190  # ~10% of each class
    assert not set(train.indices) & set(test.indices)
    assert np.array_equal(DigitsDataset(split="test").indices, test.indices)
    assert not np.array_equal(DigitsDataset(split="test", seed=1).indices, test.indices)
    assert sorted(test.labels.unique().tolist()) == list(range(10))  # stratified


@pytest.mark.parametrize("size", [8, 16, 32])
def test_digits_items(size):
    ds = DigitsDataset(size=size, split="all", captions=True)
    item = ds[5]
    assert item["image"].shape == (1, size, size) and item["image"].dtype == torch.float32
    assert item["label"].dtype == torch.int64 and item["caption"] == "a handwritten digit five"
    assert ds.images.min() >= -1 and ds.images.max() <= 1
    if size == 8:  # 17 grey levels 0..16 mapped exactly
        levels = (ds.images + 1) / 2 * 16
        assert torch.allclose(levels, levels.round(), atol=1e-5)
    else:  # antialiased resize keeps the mean
        small = DigitsDataset(size=8, split="all").images
        assert torch.allclose(ds.images.mean((1, 2, 3)), small.mean((1, 2, 3)), atol=0.02)


def test_digits_bad_options():
    with pytest.raises(ValueError, match="allowed: all, test, train"):
        DigitsDataset(split="validation")
    with pytest.raises(ValueError, match="test_fraction"):
        DigitsDataset(test_fraction=1.5)


# ----------------------------------------------------------------------------------------------- shapes

_DESC = r"a (small|large) (\w+) (\w+)"


def parse_caption(caption):
    """Caption -> ([(size, colour, kind), ...], relation-or-order phrase)."""
    m = re.fullmatch(rf"{_DESC} (left of|right of|above|below) {_DESC}", caption)
    if m:
        g = m.groups()
        return [g[0:3], g[4:7]], g[3]
    m = re.fullmatch(rf"((?:{_DESC}, )*{_DESC}) and {_DESC} (from left to right|from top to bottom)", caption)
    if m:
        return re.findall(_DESC, caption), m.groups()[-1]
    m = re.fullmatch(rf"{_DESC} (.+)", caption)
    assert m, caption
    return [m.groups()[:3]], m.groups()[3]


def test_shapes_deterministic_from_seed_and_index_for_any_length():
    short, long = ShapesDataset(length=5), ShapesDataset(length=5000)
    for i in range(5):
        a, b = short[i], long[i]
        assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"]
        assert torch.equal(a["masks"], b["masks"])
    other = ShapesDataset(length=5, seed=1)
    assert not all(torch.equal(short[i]["image"], other[i]["image"]) for i in range(5))
    assert ShapesDataset(length=3, size=48)[2]["image"].shape == (3, 48, 48)
    with pytest.raises(IndexError):
        short[5]


def test_shapes_items_and_caption_agree_with_labels():
    ds = ShapesDataset(length=300)
    counts = set()
    for i in range(len(ds)):
        item = ds[i]
        n = int(item["count"])
        counts.add(n)
        img = item["image"]
        assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and img.min() >= -1 and img.max() <= 1
        words, phrase = parse_caption(item["caption"])
        assert len(words) == n
        for k, (size, colour, kind) in enumerate(words):
            assert ds.kinds[item["kinds"][k]] == kind and ds.colours[item["colours"][k]] == colour
            assert SIZES[item["sizes"][k]] == size
        assert (item["kinds"][n:] == -1).all() and (item["positions"][n:] == -1).all()
        pos = item["positions"][:n].tolist()
        if n == 1:
            assert phrase == region_phrase(*pos[0])
        elif n == 2:
            (x0, y0), (x1, y1) = pos
            horizontal = abs(x0 - x1) >= abs(y0 - y1)
            expect = ("left of" if x0 < x1 else "right of") if horizontal else ("above" if y0 < y1 else "below")
            assert phrase == expect
        else:
            axis = 0 if phrase == "from left to right" else 1
            coords = [p[axis] for p in pos]
            assert coords == sorted(coords)
        assert item["label"] == item["kinds"][0]  # label_from="kind": the first shape mentioned
    assert counts == {1, 2, 3}


def test_shapes_masks_agree_with_pixels_and_edges():
    ds = ShapesDataset(length=60, background="light")
    for i in range(len(ds)):
        item, sample = ds[i], ds.render(i)
        img = sample.image  # uint8 (S, S, 3)
        lm = item["label_map"]
        assert torch.equal(item["masks"].long().sum(0), (lm > 0).long())  # disjoint, cover the shapes
        for k in range(int(item["count"])):
            mask = item["masks"][k].numpy()
            assert mask.sum() > 4, (i, k)  # every listed shape is visible
            # Interior pixels (mask and its 8 neighbours) are exactly the shape's colour.
            padded = np.pad(mask, 1)
            inner = np.ones_like(mask)
            for dy in range(3):
                for dx in range(3):
                    inner &= padded[dy:dy + 32, dx:dx + 32]
            colour = COLOURS[ds.colours[int(item["colours"][k])]]
            assert inner.any() and (img[inner] == colour).all(), (i, k)
            assert (item["edges"][0].numpy().astype(bool) & mask).any()
        background = (lm == 0).numpy()
        assert (img[background].astype(int) - np.array(sample.background)).__abs__().mean() < 8
        edges = item["edges"][0].bool()
        assert not (edges & (lm == 0)).any()
        assert torch.equal(edges, torch.from_numpy(edge_map(lm.numpy())))


def test_shapes_overlap_is_bounded_and_options():
    ds = ShapesDataset(length=200, max_overlap=0.1)
    for i in range(len(ds)):
        shapes = ds.render(i).shapes
        for a in range(len(shapes)):
            for b in range(a + 1, len(shapes)):
                p, q = shapes[a], shapes[b]
                w = min(p.x + p.half, q.x + q.half) - max(p.x - p.half, q.x - q.half)
                h = min(p.y + p.half, q.y + q.half) - max(p.y - p.half, q.y - q.half)
                assert max(w, 0) * max(h, 0) <= 0.1 * 4 * min(p.half, q.half) ** 2 + 1e-9
    one = ShapesDataset(length=20, min_shapes=1, max_shapes=1, kinds=["circle", "star"],
                        colours=["red"], label_from="kind_colour", return_masks=False, cache=True)
    assert one.classes == ("red circle", "red star") and "masks" not in one[0]
    assert all(one[i]["caption"].split()[2:4] == ["red", KINDS[0] if one[i]["label"] == 0 else "star"]
               for i in range(20))
    assert one.render(3) is one.render(3)  # cached
    with pytest.raises(ValueError, match="allowed"):
        ShapesDataset(kinds=("circle", "hexagon"))
    with pytest.raises(ValueError, match="max_shapes"):
        ShapesDataset(min_shapes=2, max_shapes=1)


def test_shapes_export_reads_back_as_an_image_folder(tmp_path):
    ds = ShapesDataset(length=50)
    ds.export(tmp_path, n=6, start=10)
    rows = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(10, 16))
    for r in rows:
        item = ds[r["index"]]
        assert r["text"] == item["caption"] and r["count"] == int(item["count"])
        assert [s["kind"] for s in r["shapes"]] == [ds.kinds[k] for k in item["kinds"][: r["count"]]]
        mask = np.asarray(Image.open(tmp_path / r["mask_file_name"]))
        assert np.array_equal(mask, item["label_map"].numpy())
        edges = np.asarray(Image.open(tmp_path / r["edge_file_name"])) > 0
        assert np.array_equal(edges, item["edges"][0].numpy() > 0)
    folder = FolderDataset(tmp_path, size=None)  # metadata.jsonl lists the images; masks/edges are not data
    assert len(folder) == 6 and folder.classes == ()
    for j, r in enumerate(rows):
        assert folder[j]["caption"] == r["text"]
        assert torch.equal(folder[j]["image"], ds[r["index"]]["image"])


# ----------------------------------------------------------------------------------------------- folder


def _save(img, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _solid(colour, size=(16, 16), mode="RGB"):
    return Image.new(mode, size, colour)


def _pixel(t, y=None, x=None):
    """Channel values of (C, H, W) tensor t at (y, x) (default the centre) as a list."""
    y = t.shape[1] // 2 if y is None else y
    x = t.shape[2] // 2 if x is None else x
    return t[:, y, x].tolist()


def test_folder_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # stored: left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    _save(img, tmp_path / "rot.jpg", exif=exif, quality=95)
    x = FolderDataset(tmp_path, size=None)[0]["image"]
    assert x.shape == (3, 40, 20)  # portrait after transposing
    top, bottom = _pixel(x, 5, 10), _pixel(x, 35, 10)
    assert top[0] > 0.8 and top[2] < -0.8 and bottom[2] > 0.8 and bottom[0] < -0.8  # left became top
    y = FolderDataset(tmp_path, size=10)[0]["image"]  # with JPEG draft decoding and a centre crop
    assert y.shape == (3, 10, 10) and _pixel(y, 0, 5)[0] > 0.8 and _pixel(y, 9, 5)[2] > 0.8


def test_folder_16bit_rgb_png_is_scaled(tmp_path):
    """PIL reads a 48-bit PNG as 8-bit RGB (the high byte): scaled, not clipped."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    a = np.zeros((4, 4, 3), ">u2")
    a[...] = (4096, 65535, 300)
    raw = b"".join(b"\x00" + row.tobytes() for row in a)
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    (tmp_path / "rgb16.png").write_bytes(png)
    x = FolderDataset(tmp_path, size=None)[0]["image"]
    assert _pixel(x) == pytest.approx([4096 / 65535 * 2 - 1, 1.0, 300 / 65535 * 2 - 1], abs=2 / 255)


def test_folder_mode_conversions(tmp_path):
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # transparent red -> white
    rgba.paste((0, 255, 0, 255), (0, 0, 8, 16))  # opaque green left half
    _save(rgba, tmp_path / "a_rgba.png")
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(0, (0, 0, 8, 16))
    _save(pal, tmp_path / "b_palette.png", transparency=0)  # index 0 (black) transparent -> white
    _save(Image.fromarray(np.full((16, 16), 4096, np.uint16)), tmp_path / "c_16bit.png")
    _save(_solid((255, 0, 0, 0), mode="CMYK"), tmp_path / "d_cmyk.jpg", quality=95)  # pure cyan
    _save(_solid((50, 0), mode="LA"), tmp_path / "e_la.png")  # fully transparent grey -> white
    _save(_solid(77, mode="L"), tmp_path / "f_grey.bmp")
    frames = [_solid((255, 0, 0), mode="RGB"), _solid((0, 0, 255), mode="RGB")]
    _save(frames[0], tmp_path / "g_anim.gif", save_all=True, append_images=frames[1:])
    _save(_solid((0, 128, 255)), tmp_path / "h.webp", lossless=True)
    _save(_solid((10, 200, 30)), tmp_path / "i.tiff")
    ds = FolderDataset(tmp_path, size=8)
    assert [f.split("_")[0].split(".")[0] for f in ds.files] == list("abcdefghi")
    px = {f[0]: ds[i]["image"] for i, f in enumerate(ds.files)}
    assert all(v.shape == (3, 8, 8) and v.dtype == torch.float32 for v in px.values())
    assert _pixel(px["a"], 4, 1) == pytest.approx([-1, 1, -1], abs=1e-6)
    assert _pixel(px["a"], 4, 6) == pytest.approx([1, 1, 1], abs=1e-6)
    assert _pixel(px["b"], 4, 1) == pytest.approx([1, 1, 1], abs=1e-6)
    assert _pixel(px["b"], 4, 6) == pytest.approx([1, -1, -1], abs=1e-6)
    # 16-bit: 4096/65535 of full scale, not clipped to 255 as PIL's own convert would do.
    assert _pixel(px["c"]) == pytest.approx([4096 / 65535 * 2 - 1] * 3, abs=1e-5)
    assert _pixel(px["d"]) == pytest.approx([-1, 1, 1], abs=0.05)
    assert _pixel(px["e"]) == pytest.approx([1, 1, 1], abs=1e-6)
    assert _pixel(px["f"]) == pytest.approx([77 / 127.5 - 1] * 3, abs=1e-6)
    assert _pixel(px["g"]) == pytest.approx([1, -1, -1], abs=0.02)  # the first frame
    assert _pixel(px["h"]) == pytest.approx([-1, 128 / 127.5 - 1, 1], abs=1e-6)
    assert _pixel(px["i"]) == pytest.approx([10 / 127.5 - 1, 200 / 127.5 - 1, 30 / 127.5 - 1], abs=1e-6)
    grey = FolderDataset(tmp_path, size=8, channels=1)
    g = {f[0]: grey[i]["image"] for i, f in enumerate(grey.files)}
    assert g["c"].shape == (1, 8, 8) and _pixel(g["c"]) == pytest.approx([4096 / 65535 * 2 - 1], abs=1e-5)
    assert _pixel(g["f"]) == pytest.approx([77 / 127.5 - 1], abs=1e-6)
    luma = round(0.299 * 10 + 0.587 * 200 + 0.114 * 30)
    assert _pixel(g["i"]) == pytest.approx([luma / 127.5 - 1], abs=1.5 / 127.5)


def test_folder_resize_centre_crop_and_flip(tmp_path):
    img = Image.new("RGB", (60, 20), (255, 0, 0))
    img.paste((0, 255, 0), (20, 0, 40, 20))
    img.paste((0, 0, 255), (40, 0, 60, 20))
    _save(img, tmp_path / "stripes.png")
    _save(Image.new("RGB", (30, 30), (255, 255, 255)), tmp_path / "z.png")
    x = FolderDataset(tmp_path, size=8)[0]["image"]
    green = torch.tensor([-1.0, 1.0, -1.0])[:, None, None].expand(3, 8, 8)
    assert x.shape == (3, 8, 8) and torch.allclose(x[..., 1:-1], green[..., 1:-1], atol=1e-6)
    assert torch.allclose(x, green, atol=0.2)  # the filter sees a little beyond the crop, like resize-then-crop
    edge = Image.new("RGB", (20, 20), (0, 0, 0))
    edge.paste((255, 255, 255), (0, 0, 10, 20))
    _save(edge, tmp_path / "y.png")
    flipped = FolderDataset(tmp_path, size=20, flip_p=1.0)
    plain = FolderDataset(tmp_path, size=20)
    assert torch.equal(flipped[1]["image"], plain[1]["image"].flip(-1))
    a, b = (FolderDataset(tmp_path, size=20, flip_p=0.5, seed=3) for _ in range(2))
    decisions = []
    for epoch in range(8):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert torch.equal(a[1]["image"], b[1]["image"])
        decisions.append(bool(torch.equal(a[1]["image"], plain[1]["image"])))
    assert len(set(decisions)) == 2  # flips vary by epoch, reproducibly


def test_folder_bad_files_are_skipped_with_a_warning(tmp_path):
    _save(_solid((1, 2, 3)), tmp_path / "good.png")
    full = tmp_path / "full.png"
    _save(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), full)
    (tmp_path / "truncated.png").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("this is not a picture\n")
    _save(_solid((0, 0, 0), size=(100, 80)), tmp_path / "huge.png")  # over max_pixels=5000 below
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")
    with pytest.warns(UserWarning, match="skipped 4 unusable") as rec:
        ds = FolderDataset(tmp_path, size=8, max_pixels=5000)
    message = str(rec[0].message)
    for name in ("truncated.png", "empty.png", "text.png", "huge.png"):
        assert str(tmp_path / name) in message
    reasons = dict(ds.skipped)
    assert reasons[str(tmp_path / "empty.png")] == "empty file"
    assert "not an image" in reasons[str(tmp_path / "text.png")]
    assert "decompression bomb" in reasons[str(tmp_path / "huge.png")]
    assert "corrupt or truncated" in reasons[str(tmp_path / "truncated.png")]
    assert ds.files == ["good.png"] and ds[0]["path"] == str(tmp_path / "good.png")


def test_folder_truncated_tiff_needs_full_verify(tmp_path):
    """The quick scan sees cut JPEG/GIF/BMP/PNG files (tests/test_hardening_data.py), not a cut TIFF."""
    rng = np.random.default_rng(0)
    _save(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), tmp_path / "a.tif")
    data = (tmp_path / "a.tif").read_bytes()
    (tmp_path / "b.tif").write_bytes(data[: len(data) // 2])
    quick = FolderDataset(tmp_path, size=8)
    assert len(quick) == 2
    with pytest.warns(UserWarning, match=re.escape(str(tmp_path / "b.tif"))):
        assert quick[1]["path"] == str(tmp_path / "a.tif")  # the loader reads the next image instead
    with pytest.warns(UserWarning, match="b.tif"):
        assert FolderDataset(tmp_path, size=8, verify="full").files == ["a.tif"]


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        FolderDataset(tmp_path / "nowhere")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=re.escape(repr(str(tmp_path)))):
        FolderDataset(tmp_path)
    with pytest.raises(ValueError, match="allowed"):
        FolderDataset(tmp_path, labels="subdirs")


def test_folder_classes_and_captions(tmp_path):
    for name, colour in [("dog/b.png", 1), ("cat/a.png", 2), ("dog/c.jpg", 3), ("cat/deep/d.png", 4)]:
        _save(_solid((colour, 0, 0)), tmp_path / name)
    ds = FolderDataset(tmp_path, size=4)
    assert ds.classes == ("cat", "dog")
    assert [(f, int(ds[i]["label"])) for i, f in enumerate(ds.files)] == [
        ("cat/a.png", 0), ("cat/deep/d.png", 0), ("dog/b.png", 1), ("dog/c.jpg", 1)]
    assert "label" not in FolderDataset(tmp_path, size=4, labels="none")[0]
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 4, 4) and batch["label"].tolist() == [0, 0, 1, 1]

    rows = [{"file_name": "dog/b.png", "text": "a dog"}, {"file_name": "cat/a.png", "caption": "a cat"},
            {"file_name": "dog/gone.png", "text": "missing"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    with pytest.warns(UserWarning, match="gone.png"):
        ds = FolderDataset(tmp_path, size=4)
    assert ds.files == ["cat/a.png", "dog/b.png"]  # the metadata lists the dataset
    assert [ds[i]["caption"] for i in range(2)] == ["a cat", "a dog"]
    assert [int(ds[i]["label"]) for i in range(2)] == [0, 1]

    (tmp_path / "metadata.jsonl").write_text('{"file_name": "cat/a.png", "text": "ok"}\n{"file_name": oops}\n')
    with pytest.raises(ValueError, match=r"metadata.jsonl, line 2: not valid JSON"):
        FolderDataset(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"text": "no file"}\n')
    with pytest.raises(ValueError, match=r"line 1: missing or non-string 'file_name'"):
        FolderDataset(tmp_path)

    (tmp_path / "metadata.jsonl").unlink()
    _save(_solid((9, 9, 9)), tmp_path / "loose.png")
    assert FolderDataset(tmp_path, size=4).classes == ()  # auto: an image in root means no classes
    with pytest.raises(ValueError, match="loose.png"):
        FolderDataset(tmp_path, size=4, labels="folders")


# ----------------------------------------------------------------------------------------------- npz


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    np.savez(tmp_path / "u8.npz", images=u8, labels=np.arange(5), captions=np.array(list("abcde")))
    ds = NpzDataset(tmp_path / "u8.npz")
    item = ds[2]
    assert item["image"].shape == (3, 6, 7) and item["label"] == 2 and item["caption"] == "c"
    assert np.array_equal(tensor_to_uint8(item["image"]), u8[2])
    assert torch.equal(uint8_to_tensor(u8[2]), item["image"])
    unit = rng.random((4, 5, 5, 1)).astype(np.float32)
    np.savez(tmp_path / "unit.npz", images=unit)
    x = NpzDataset(tmp_path / "unit.npz", float_range="unit")[1]["image"]
    assert x.shape == (1, 5, 5) and torch.allclose(x, torch.from_numpy(unit[1]).permute(2, 0, 1) * 2 - 1)
    np.savez(tmp_path / "grey.npz", images=np.zeros((2, 4, 4), np.float64))
    assert NpzDataset(tmp_path / "grey.npz")[0]["image"].shape == (1, 4, 4)


def test_npz_errors(tmp_path):
    def write(name, **arrays):
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    with pytest.raises(FileNotFoundError, match="nope.npz"):
        NpzDataset(tmp_path / "nope.npz")
    with pytest.raises(ValueError, match=r"x.npz: missing key 'images'; found keys: \['pics'\]"):
        NpzDataset(write("x.npz", pics=np.zeros((1, 2, 2, 3), np.uint8)))
    with pytest.raises(ValueError, match="dtype int32; allowed: uint8, float16, float32, float64"):
        NpzDataset(write("i.npz", images=np.zeros((1, 2, 2, 3), np.int32)))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*use float_range='symmetric'"):
        NpzDataset(write("r.npz", images=-np.ones((1, 2, 2, 3), np.float32)), float_range="unit")
    with pytest.raises(ValueError, match="stored as uint8"):
        NpzDataset(write("b.npz", images=np.full((1, 2, 2, 3), 200.0, np.float32)))
    with pytest.raises(ValueError, match="NaN"):
        NpzDataset(write("n.npz", images=np.full((1, 2, 2, 3), np.nan, np.float32)))
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        NpzDataset(write("c.npz", images=np.zeros((1, 2, 2, 5), np.uint8)))
    with pytest.raises(ValueError, match="'labels' must be an integer array of shape \\(2,\\)"):
        NpzDataset(write("l.npz", images=np.zeros((2, 2, 2, 3), np.uint8), labels=np.zeros(3, np.int64)))
    with pytest.raises(ValueError, match="pickle"):
        NpzDataset(write("o.npz", images=np.array([object(), None], dtype=object)))
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="junk.npz: cannot read"):
        NpzDataset(tmp_path / "junk.npz")
