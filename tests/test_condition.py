"""The condition schema (denoisekit/condition.py): one table of keys with their null, batch, index and check
rules, used by guidance, the networks and the tuners."""

import pytest
import torch

from denoisekit.condition import (CONDITION_KEYS, NETWORK_KEYS, check_condition, concat_conditions, index_condition,
                                  merge_conditions, null_condition, rows_of)
from denoisekit.guidance import ClassifierFreeGuidance
from denoisekit.models.layers import COND_KEYS, parse_conditioning


def test_the_table_has_every_key_and_the_networks_read_theirs():
    keys = {"labels", "text", "context", "context_mask", "concat", "mask", "control", "embedding"}
    assert keys <= set(CONDITION_KEYS)
    assert COND_KEYS == NETWORK_KEYS == ("labels", "context", "context_mask", "concat", "embedding")
    with pytest.raises(ValueError, match="unknown conditioning keys \\['control'\\]; allowed: labels, context"):
        parse_conditioning({"control": torch.zeros(1, 3, 4, 4)}, torch.zeros(1, 1, 4, 4))


def test_null_rules():
    emb, ctrl = torch.randn(3, 4), torch.randn(3, 3, 2, 2)
    cond = {"labels": torch.tensor([0, 1, 2]), "embedding": emb, "control": ctrl, "mask": ctrl[:, :1] > 0}
    null = null_condition(cond, 5)
    assert null["labels"].tolist() == [5] * 3
    assert torch.equal(null["embedding"], torch.zeros(3, 4))  # the null embedding: zeros
    assert null["control"] is ctrl and null["mask"] is cond["mask"]  # inputs of the task are kept


def test_batch_index_check_and_rows():
    a = {"embedding": torch.ones(2, 3, 4), "text": ["a", "b"]}
    b = {"embedding": torch.zeros(1, 3, 4), "text": ["c"]}
    both = concat_conditions(a, b)
    assert both["embedding"].shape == (3, 3, 4) and both["text"] == ["a", "b", "c"]
    sub = index_condition(both, torch.tensor([2, 0]))
    assert sub["text"] == ["c", "a"] and not sub["embedding"][0].any()
    assert index_condition({"labels": torch.tensor(3)}, torch.tensor([0, 1]))["labels"].item() == 3  # 0-dim: every row
    check_condition(both, 3)
    with pytest.raises(ValueError, match="unknown condition key 'colour'"):
        check_condition({"colour": torch.zeros(3)}, 3)
    with pytest.raises(ValueError, match="2 entries for a batch of 3"):
        check_condition(a, 3)
    assert rows_of(None) is None and rows_of(torch.tensor(1)) is None and rows_of(both) == 3
    with pytest.raises(ValueError, match="different numbers of rows"):
        rows_of({"labels": torch.zeros(2), "text": ["a"]})


def test_merge_conditions():
    assert merge_conditions(None, None) is None
    merged = merge_conditions(torch.tensor([1, 2]), {"concat": torch.zeros(2, 1, 2, 2)}, None)
    assert set(merged) == {"labels", "concat"}
    with pytest.raises(ValueError, match="both give 'labels'"):
        merge_conditions(torch.tensor([1]), {"labels": torch.tensor([2])})


class Echo:
    def __init__(self):
        self.conds = []

    def __call__(self, y, sigma, cond=None):
        self.conds.append(cond)
        return y.clone()


def test_cfg_drops_an_embedding_to_zeros_and_keeps_a_control_image():
    y, sigma = torch.randn(2, 1, 2, 2), torch.ones(2, dtype=torch.float64)
    emb, ctrl = torch.randn(2, 8), torch.randn(2, 3, 2, 2)
    den = Echo()
    ClassifierFreeGuidance(den, 3.0)(y, sigma, {"embedding": emb, "control": ctrl})
    (cond,) = den.conds
    assert torch.equal(cond["embedding"], torch.cat([emb, torch.zeros(2, 8)]))
    assert torch.equal(cond["control"], torch.cat([ctrl, ctrl]))


def test_networks_read_embeddings_as_context_tokens():
    x = torch.zeros(2, 1, 4, 4)
    vec, seq = torch.randn(2, 8), torch.randn(2, 3, 8)
    assert parse_conditioning({"embedding": vec}, x, context_dim=8).context.shape == (2, 1, 8)
    info = parse_conditioning({"context": torch.randn(2, 5, 8), "context_mask": torch.ones(2, 5, dtype=torch.bool),
                               "embedding": seq}, x, context_dim=8)
    assert info.context.shape == (2, 8, 8) and info.context_mask.shape == (2, 8) and info.context_mask[:, 5:].all()
    assert torch.equal(info.context[:, 5:], seq)
    with pytest.raises(ValueError, match=r"cond\['embedding'\] must have shape \(2, 16\) or \(2, L, 16\)"):
        parse_conditioning({"embedding": vec}, x, context_dim=16)
    with pytest.raises(ValueError, match="no cross-attention"):
        parse_conditioning({"embedding": vec}, x)
