"""Hardening of the command line (issue 19): bad sampler options, guidance scales, output names, YAML syntax
and run directories given as files are one error line, never a traceback; ``sample --n`` is honoured."""

import numpy as np
import pytest
from PIL import Image

from denoisekit.cli import main
from denoisekit.samplers import SAMPLERS
from denoisekit.samplers.run import check_sampler_options, sampler_options

# A class-conditional U-Net small enough to train 2 steps in a few seconds.
TINY_CLASS_RUN = """\
data: {name: digits, size: 8}
model: {name: unet, in_channels: 1, channels: 8, channel_mult: [1, 2], num_res_blocks: 1, attention_levels: [],
        mid_attention: false, head_channels: 8, norm_groups: 4, num_classes: 10}
process: {name: edm, prediction: edm}
condition: {kind: class, dropout: 0.1}
train: {steps: 2, batch_size: 8, save_every: 0}
sample: {n: 0, every: 0, nfe: 2, cfg_scale: 2.0}
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY_CLASS_RUN)
    return path


@pytest.fixture(scope="module")
def run(config, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", str(config), "--out", str(out), "--quiet"]) == 0
    return out


def _one_line_error(capsys, *messages):
    err = capsys.readouterr().err
    assert err.startswith("denoisekit: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for m in messages:
        assert m in err, err
    return err


# -------------------------------------------------------------------------------------- sampler options


def test_every_sampler_accepts_its_own_defaults():
    for name, (_, defaults) in SAMPLERS.items():
        check_sampler_options(name, defaults)
    assert "eta" not in sampler_options("euler") and "s_noise" in sampler_options("euler")  # euler fixes eta = 0
    assert "eta" in sampler_options("euler_ancestral") and sampler_options("flow_euler") == {}


@pytest.mark.parametrize("sampler, options, message", [
    ("dpmpp_2m", {"bogus": 1}, "sampler 'dpmpp_2m' has no option 'bogus'; allowed: lower_order_final"),
    ("euler", {"eta": 1.0}, "sampler 'euler' has no option 'eta'; allowed: s_noise"),
    ("flow_euler", {"eta": 1.0}, "sampler 'flow_euler' has no option 'eta'; it takes none"),
    ("ddim", {"eta": "abc"}, "sampler 'ddim' option eta: expected a number, got 'abc'"),
    ("ddim", {"eta": -1}, "sampler 'ddim' option eta must be >= 0, got -1"),
    ("unipc_bh2", {"variant": "bh3"}, "sampler 'unipc_bh2' option variant: unknown value 'bh3'; allowed: bh1, bh2"),
    ("heun_sde", {"s_churn": -0.5}, "must be >= 0"),
])
def test_bad_sampler_options_name_the_sampler_key_and_what_is_allowed(sampler, options, message):
    with pytest.raises(ValueError) as err:
        check_sampler_options(sampler, options)
    assert message in str(err.value)


@pytest.mark.parametrize("args, message", [
    (["--sampler-arg", "bogus=1"], "has no option 'bogus'; allowed: "),
    (["--sampler-arg", "eta=abc"], "sampler 'ddim' option eta: expected a number, got 'abc'"),
    (["--sampler-arg", "eta=-1"], "eta must be >= 0"),
    (["--out", "x.jpg"], "--out must end in .png; supported: .png"),
    (["--gif", "x.png"], "--gif must end in .gif"),
])
def test_sample2d_bad_options_are_one_line(args, message, tmp_path, capsys):
    # checked before the run is read: no run needed
    argv = ["sample2d", str(tmp_path / "no-run"), "--sampler", "ddim", *args]
    if "--out" not in args:
        argv += ["--out", str(tmp_path / "s.png")]
    assert main(argv) == 2
    _one_line_error(capsys, message)


@pytest.mark.slow  # trains (the module's tiny run)
@pytest.mark.parametrize("args, message", [
    (["--sampler-arg", "bogus=1"], "sampler 'dpmpp_2m' has no option 'bogus'; allowed: lower_order_final"),
    (["--sampler", "ddim", "--sampler-arg", "eta=abc"], "sampler 'ddim' option eta: expected a number, got 'abc'"),
    (["--sampler", "ddim", "--sampler-arg", "eta=-1"], "sampler 'ddim' option eta must be >= 0, got -1"),
    (["--cfg", "-1"], "--cfg: the guidance scale must be >= 0 (1 = no guidance), got -1"),
])
def test_sample_bad_options_are_one_line(run, args, message, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["sample", str(run), "--sampler", "dpmpp_2m", "--out", str(out), *args]) == 2
    _one_line_error(capsys, message)
    assert not out.exists()


@pytest.mark.slow  # trains (the module's tiny run)
def test_tune_refuses_a_negative_guidance_scale(run, tmp_path, capsys):
    assert main(["tune", str(run), "--nfe", "2", "--cfg", "-0.5", "--out", str(tmp_path / "s.json")]) == 2
    _one_line_error(capsys, "guidance scale must be >= 0")


# ------------------------------------------------------------------------------- run directories, YAML


@pytest.mark.slow  # trains (the module's tiny run)
def test_a_file_given_for_a_run_directory(run, config, tmp_path, capsys):
    assert main(["sample", str(run), "--classifier", str(config), "--out", str(tmp_path / "x.png")]) == 2
    _one_line_error(capsys, f"--classifier: expected a run directory, got a file: {config}")
    assert main(["train", str(config), "--out", str(tmp_path / "r"), "--set", f"latent.autoencoder={config}"]) == 2
    _one_line_error(capsys, f"latent.autoencoder: expected a run directory, got a file: {config}")


@pytest.mark.parametrize("text, where, problem", [
    ("data:\n  name: digits\n  size: [8\nmodel: {name: unet}\n", ":4:6", "expected ',' or ']'"),
    ("data:\n  name: digits\n\tsize: 8\n", ":3:1", "found character '\\t' that cannot start any token"),
    ("data: {name: digits\n", ":2:1", "expected ',' or '}'"),
])
def test_yaml_syntax_error_is_one_line_with_line_and_column(text, where, problem, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["train", str(path), "--out", str(tmp_path / "r")]) == 2
    _one_line_error(capsys, f"{path}{where}: not valid YAML: ", problem)


# ------------------------------------------------------------------------------------------ sample --n


@pytest.mark.slow  # trains (the module's tiny run)
def test_sample_n_is_honoured_with_label_all(run, tmp_path, capsys):
    a, b = tmp_path / "8.npz", tmp_path / "25.npz"
    assert main(["sample", str(run), "--n", "8", "--label", "all", "--out", str(a)]) == 0
    assert main(["sample", str(run), "--n", "25", "--label", "all", "--out", str(b)]) == 0
    assert "25 images" in capsys.readouterr().out
    small, large = np.load(a), np.load(b)
    assert small["labels"].tolist() == list(range(8))
    assert large["images"].shape[0] == 25 and large["labels"].tolist() == [i % 10 for i in range(25)]
    assert np.array_equal(small["images"], large["images"][:8])  # image i: seed + i, label i mod 10, whatever n
    png = tmp_path / "25.png"
    assert main(["sample", str(run), "--n", "25", "--out", str(png)]) == 0
    cell = 34  # 8x8 images upscaled to 32 px, 2 px apart
    w, h = Image.open(png).size  # one row per class (6 px between classes), 3 wide, and a column of class labels
    assert h == 2 + 10 * cell + 9 * 6 and 2 + 3 * cell < w < 2 + 4 * cell
