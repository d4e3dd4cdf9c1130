"""Checkpoints: pickle-free round trips, atomic writes, pruning, and clear errors for bad files."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from denoisekit.engine import checkpoint as ckpt
from denoisekit.engine.checkpoint import (capture_rng, recover, latest_checkpoint, list_checkpoints,
    load_checkpoint, restore_rng, save_checkpoint)
from denoisekit.io import write_atomic, write_text_atomic


def _trained(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.95))
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(5, 3)).square().mean().backward()
        opt.step()
    return net, opt


def _save(root, step, net, opt, **kw):
    return save_checkpoint(root, step, model=net.state_dict(), ema=net.state_dict(), optimizer=opt.state_dict(),
                           state={"note": "hi", **kw.pop("state", {})}, **kw)


def test_round_trip_continues_identically(tmp_path):
    net, opt = _trained()
    path = _save(tmp_path, 3, net, opt)
    assert path.name == "step_00000003"
    assert sorted(p.name for p in path.iterdir()) == ["ema.safetensors", "model.safetensors",
                                                      "optimizer.safetensors", "state.json"]
    state = json.loads((path / "state.json").read_text())  # plain JSON: nothing pickled
    assert state["step"] == 3 and state["note"] == "hi"

    loaded = load_checkpoint(path)
    net2, opt2 = _trained(seed=1)  # different weights and optimiser state, same shapes
    net2.load_state_dict(loaded["model"])
    opt2.load_state_dict(loaded["optimizer"])
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95)
    x = torch.randn(5, 3)
    for n, o in ((net, opt), (net2, opt2)):
        o.zero_grad()
        n(x).square().mean().backward()
        o.step()
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)
    assert load_checkpoint(path, weights_only=True).keys() == {"step", "state", "model", "ema"}


def test_rng_states_round_trip_through_json():
    state = json.loads(json.dumps(capture_rng()))
    expect = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(7), np.random.rand(7), random.random()
    restore_rng(state)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1]) and expect[2] == got[2]


def test_keep_last_and_resave(tmp_path):
    net, opt = _trained()
    for step in (10, 20, 30, 40):
        _save(tmp_path, step, net, opt, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [30, 40]
    _save(tmp_path, 40, net, opt, keep_last=2, state={"note": "again"})  # same step: replaced whole
    assert load_checkpoint(latest_checkpoint(tmp_path))["state"]["note"] == "again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000030", "step_00000040"]
    assert latest_checkpoint(tmp_path / "missing") is None and list_checkpoints(tmp_path / "missing") == []


def test_failed_save_leaves_previous_checkpoint_and_no_debris(tmp_path, monkeypatch):
    net, opt = _trained()
    good = _save(tmp_path, 1, net, opt)
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    calls = []

    def failing(path, tensors, metadata=None):
        calls.append(path.name)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(path, tensors, metadata)

    real = ckpt.save_tensors
    monkeypatch.setattr(ckpt, "save_tensors", failing)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 2, net, opt)
    with pytest.raises(OSError, match="disk full"):  # also when overwriting the same step
        calls.clear()
        _save(tmp_path, 1, net, opt)
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000001"]
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    (tmp_path / ".tmp-step_00000005-x").mkdir()  # as left by a killed process
    recover(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000001"]


def test_write_text_atomic(tmp_path):
    p = tmp_path / "f.txt"
    write_text_atomic(p, "one")
    with pytest.raises(ZeroDivisionError):
        write_atomic(p, lambda tmp: (tmp.write_text("partial"), 1 / 0))
    assert p.read_text() == "one" and [q.name for q in tmp_path.iterdir()] == ["f.txt"]


def test_load_errors_name_the_file(tmp_path):
    net, opt = _trained()
    path = _save(tmp_path, 5, net, opt)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "step_00000009")
    (path / "optimizer.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="optimizer.safetensors: cannot read safetensors"):
        load_checkpoint(path)
    load_checkpoint(path, weights_only=True)  # the weights are still readable
    state = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps({**state, "format": "something/9"}))
    with pytest.raises(ValueError, match="format is 'something/9'"):
        load_checkpoint(path)
    (path / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match="state.json: not valid JSON"):
        load_checkpoint(path)
    (path / "state.json").unlink()
    with pytest.raises(FileNotFoundError, match="state.json: missing"):
        load_checkpoint(path)
