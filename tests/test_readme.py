"""The README, run as a newcomer would: every ``denoisekit`` command of its ```bash blocks in order from an empty
directory (quick form: 2 training steps, 10 samples, 20 toy steps, 2 tuning iterations on 8 noises), and its Python blocks.
The set-up block (``make demo``/``make test``) is what CI itself runs; the emoji block needs the Noto font and
is run at toy widths by ``tests/test_emoji.py``."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from denoisekit.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BASH = re.findall(r"```bash\n(.*?)```", README, re.S)
PYTHON = re.findall(r"```python\n(.*?)```", README, re.S)

QUICK = [(r"train\.steps=\d+", "train.steps=2"), (r"--n \d+", "--n 10"), (r"--steps \d+", "--steps 20")]


def commands(block: str) -> list[list[str]]:
    """The block's commands as argv lists (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


#: More overrides for commands of these configs: the 64x64 shapes sets at 64 images, the autoencoder's held-out
#: evaluation on 24 and latent-scale fit on 8 (the latent pipeline is tested at full wiring in tests/test_latent.py).
QUICK_SETS = {"configs/autoencoder/": ["data.length=64", "eval.held_out=24", "eval.scale_images=8"],
              "configs/shapes64-latent.yaml": ["data.length=64"]}


def quick(argv: list[str]) -> list[str]:
    for config, sets in QUICK_SETS.items():
        if any(a.startswith(config) for a in argv):
            argv = argv + [x for kv in sets for x in ("--set", kv)]
    line = shlex.join(argv)
    for pattern, repl in QUICK:
        line = re.sub(pattern, repl, line)
    argv = shlex.split(line)
    if argv[1] == "tune":
        argv += ["--iters", "2", "--samples", "8", "--eval-samples", "8", "--batch", "8"]
    if argv[1] in ("train", "train-autoencoder", "train-classifier") and "--resume" not in argv \
            and not any("train.steps=" in a for a in argv):
        argv += ["--set", "train.steps=2"]
    return argv


def test_readme_walk_is_commands_only():
    """Every line of the walk is a ``denoisekit`` command; the command-line section's training commands state
    their CPU-sized budget on the line (the latent and emoji sections state theirs in the text)."""
    walk = [argv for block in BASH if "make demo" not in block for argv in commands(block)]
    assert len(walk) > 20
    for argv in walk:
        assert argv[0] == "denoisekit", f"README: not a denoisekit command: {shlex.join(argv)}"
    section = next(block for block in BASH if "runs/digits" in block)
    for argv in commands(section):
        if argv[1] in ("train", "train-autoencoder", "train-classifier") and "--resume" not in argv:
            assert any("train.steps=" in a for a in argv), f"README: state the budget: {shlex.join(argv)}"


@pytest.mark.slow
def test_readme_commands_run_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    for block in BASH:
        if "make demo" in block or "emoji" in block:
            continue
        for argv in commands(block):
            argv = quick(argv)
            rc = main(argv[1:] + ["--quiet"])
            out = capsys.readouterr()
            assert rc == 0, f"README: {shlex.join(argv)} -> {rc}\n{out.err[-2000:]}"


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path, monkeypatch):
    """The Python tour, in order, in one namespace: the training example (quick: 20 steps), then loading and
    generating from the run the command-line walk names (trained here for 2 steps)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    assert main(["train", "configs/digits-demo.yaml", "--out", "runs/digits", "--set", "train.steps=2",
                 "--quiet"]) == 0
    namespace: dict = {}
    for block in PYTHON:
        code = re.sub(r"for step in range\(\d+\)", "for step in range(20)", block)
        code = re.sub(r"nfe=\d+", "nfe=4", code)
        # the external-model snippet wraps a diffusers U-Net nobody has here: run it aside, without one
        exec(compile(code, "README.md", "exec"), dict(namespace) if "unet(" in code else namespace)  # noqa: S102
    assert (tmp_path / "my-digits.png").is_file() and (tmp_path / "digits.png").is_file()
