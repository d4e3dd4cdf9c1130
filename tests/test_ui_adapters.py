"""The UI's adapters and inpainting (issue 17): a Generate request with LoRA adapters and a ControlNet gives the
images of ``denoisekit sample --lora FILE:W --controlnet RUN --control IMAGE --control-scale S`` pixel for pixel,
and an Inpaint request the result of ``denoisekit inpaint --input IMAGE --mask MASK``, over toy runs trained here
(a base U-Net, a LoRA run and a ControlNet run on it, a few steps each); the app's endpoints through gradio_client
(the drawn mask of the image editor included)."""

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the UI needs gradio (the 'ui' extra)")

from denoisekit.cli import main  # noqa: E402
from denoisekit.engine import Engine  # noqa: E402
from denoisekit.train.config import apply_overrides, config_from_dict  # noqa: E402
from denoisekit.train.recipes import ControlNetRecipe, DiffusionRecipe, LoraRecipe  # noqa: E402
from denoisekit.ui.jobs import Request, run_request  # noqa: E402
from denoisekit.ui.runs import RunLibrary  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from recipe_cases.diffusion import CONFIG  # noqa: E402

BASE = ["model.mid_attention=true", "model.dropout=0.0"]
SETTINGS = dict(sampler="euler", schedule="karras", nfe=4, cfg_scale=2.0)
FLAGS = ["--sampler", "euler", "--schedule", "karras", "--nfe", "4", "--cfg", "2", "--quiet"]


def _train(recipe, out: Path, *overrides: str) -> None:
    Engine(recipe(config_from_dict(apply_overrides(CONFIG, BASE + list(overrides)))), out, progress=False).fit()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui_adapters") / "runs"
    _train(DiffusionRecipe, root / "base", "train.steps=2")
    init = f"init.from_run={root / 'base'}"
    _train(LoraRecipe, root / "lora", init, "train.recipe=lora", "lora.rank=2", "lora.alpha=4", "lora.convs=true",
           "optim.lr=1e-2")
    _train(ControlNetRecipe, root / "cn", init, "train.recipe=controlnet", "controlnet.hidden=[4,8]",
           "optim.lr=1e-2")
    edges = np.zeros((8, 8), np.uint8)
    edges[2:6, 2] = edges[2:6, 5] = edges[2, 2:6] = edges[5, 2:6] = 255
    Image.fromarray(edges).save(root.parent / "edges.png")
    g = np.random.default_rng(0)
    Image.fromarray(g.integers(0, 256, (8, 8), dtype=np.uint8)).save(root.parent / "image.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 3:7] = 255
    Image.fromarray(mask).save(root.parent / "mask.png")
    return root


def _pngs(paths) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in paths])


def _cli(tmp_path: Path, *args: str) -> np.ndarray:
    out = tmp_path / f"cli{len(list(tmp_path.glob('cli*.npz')))}.npz"
    assert main([*args, "--out", str(out)]) == 0
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.slow  # trains three toy runs
def test_adapters_give_the_clis_images(runs, tmp_path):
    lib, d = RunLibrary(runs), runs.parent
    base = ["sample", str(runs / "base"), "--n", "2", "--label", "2", "--seed", "5", *FLAGS]

    def ui(**kw):
        res = run_request(lib, Request(run="base", label="2", seed=5, batch=2, **SETTINGS, **kw), tmp_path / "ui")
        return _pngs(res.paths).reshape(2, 8, 8)

    plain = ui()
    lora = ui(loras=((str(runs / "lora"), 0.7),))
    assert np.array_equal(lora, _cli(tmp_path, *base, "--lora", f"{runs / 'lora'}:0.7")["images"].reshape(2, 8, 8))
    assert not np.array_equal(lora, plain)  # the adapter acts
    assert np.array_equal(ui(), plain)  # and the cached base is left as it was
    control = dict(controlnet=str(runs / "cn"), control_image=str(d / "edges.png"), control_scale=1.5)
    both = ui(**control)
    cli = _cli(tmp_path, *base, "--controlnet", str(runs / "cn"), "--control", str(d / "edges.png"),
               "--control-scale", "1.5")["images"].reshape(2, 8, 8)
    assert np.array_equal(both, cli)
    assert not np.array_equal(both, plain)  # the ControlNet acts
    assert np.array_equal(ui(**{**control, "control_scale": 0.0}), plain)  # scale 0: the base
    # a LoRA and a ControlNet together, as the CLI: the ControlNet is checked against the base's hash before the LoRA
    together = ui(loras=((str(runs / "lora"), 0.7),), **control)
    assert np.array_equal(together, _cli(tmp_path, *base, "--lora", f"{runs / 'lora'}:0.7", "--controlnet",
                                         str(runs / "cn"), "--control", str(d / "edges.png"), "--control-scale",
                                         "1.5")["images"].reshape(2, 8, 8))
    assert not np.array_equal(together, both) and not np.array_equal(together, lora)
    assert lib.adapters("lora") == ["lora"] and lib.adapters("controlnet") == ["cn"]
    with pytest.raises(ValueError, match="control image"):
        run_request(lib, Request(run="base", controlnet=str(runs / "cn")), tmp_path / "ui")
    with pytest.raises(ValueError, match="at most 2"):
        run_request(lib, Request(run="base", loras=((str(runs / "lora"), 1.0),) * 3), tmp_path / "ui")
    with pytest.raises(ValueError, match="not a file or run"):
        lib.file("../x")


@pytest.mark.slow
def test_inpaint_gives_the_clis_result(runs, tmp_path):
    lib, d = RunLibrary(runs), runs.parent
    for method, nfe in (("repaint", 8), ("dps", 4)):
        res = run_request(lib, Request(run="base", inpaint_image=str(d / "image.png"), mask=str(d / "mask.png"),
                                       method=method, nfe=nfe, seed=3), tmp_path / "ui")
        cli = _cli(tmp_path, "inpaint", str(runs / "base"), "--input", str(d / "image.png"), "--mask",
                   str(d / "mask.png"), "--method", method, "--nfe", str(nfe), "--seed", "3")
        got = _pngs(res.paths).reshape(8, 8)
        assert np.array_equal(got, cli[method].reshape(8, 8)), method
        assert not np.array_equal(got, np.asarray(Image.open(d / "image.png")))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(ValueError, match="no missing pixels"):
        run_request(lib, Request(run="base", inpaint_image=str(d / "image.png"), mask=str(tmp_path / "empty.png")),
                    tmp_path / "ui")
    with pytest.raises(ValueError, match="needs an image and a mask"):
        run_request(lib, Request(run="base", inpaint_image=str(d / "image.png")), tmp_path / "ui")


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    """The app served as ``denoisekit ui`` serves it (loopback, a free port, its cache in a temporary directory)."""
    from denoisekit.ui.server import ServeOptions, prepare

    base = tmp_path_factory.mktemp("serve_adapters")
    old = os.environ.get("DENOISEKIT_CACHE")
    os.environ["DENOISEKIT_CACHE"] = str(base / "cache")
    app, kwargs = prepare(runs, ServeOptions(port=0, outputs=base / "outputs"))
    app.queue(default_concurrency_limit=1)
    _, url, _ = app.launch(prevent_thread_lock=True, **kwargs)
    yield url.rstrip("/")
    app.close()
    if old is None:
        os.environ.pop("DENOISEKIT_CACHE", None)
    else:
        os.environ["DENOISEKIT_CACHE"] = old


@pytest.mark.slow
def test_app_endpoints_give_the_clis_images(server, runs, tmp_path):
    from gradio_client import Client, handle_file

    client, d = Client(server, verbose=False), runs.parent
    base = ["sample", str(runs / "base"), "--n", "2", "--label", "2", "--seed", "5", *FLAGS]

    def generate(**kw):
        args = dict(run="base", prompt="", negative="", label="2", sampler="euler", schedule="karras", nfe=4, cfg=2.0,
                    rescale=0.0, seed=5, batch=2, random_seed=False, source=None, init_image=None, strength=0.6,
                    lora1=None, lora1_file=None, lora1_weight=1.0, lora2=None, lora2_file=None, lora2_weight=1.0,
                    controlnet=None, control_image=None, control_scale=1.0)
        gallery = client.predict(**{**args, **kw}, api_name="/generate")[0]
        return _pngs([g["image"] for g in gallery]).reshape(2, 8, 8)

    want = _cli(tmp_path, *base, "--lora", f"{runs / 'lora'}:0.7")["images"].reshape(2, 8, 8)
    assert np.array_equal(generate(lora1="lora", lora1_weight=0.7), want)
    upload = handle_file(str(runs / "lora" / "lora.safetensors"))
    assert np.array_equal(generate(lora2_file=upload, lora2_weight=0.7), want)  # an uploaded file, slot 2
    want = _cli(tmp_path, *base, "--controlnet", str(runs / "cn"), "--control", str(d / "edges.png"),
                "--control-scale", "1.5")["images"].reshape(2, 8, 8)
    assert np.array_equal(generate(controlnet="cn", control_image=handle_file(str(d / "edges.png")),
                                   control_scale=1.5), want)
    with pytest.raises(Exception, match="not a file or run"):
        generate(lora1="../../etc/passwd")

    # the image editor's value: the uploaded image and a layer drawn over the missing region (alpha > 0)
    mask = np.asarray(Image.open(d / "mask.png")) > 0
    layer = np.zeros((8, 8, 4), np.uint8)
    layer[mask] = (255, 255, 255, 255)
    Image.fromarray(layer).save(tmp_path / "layer.png")
    editor = {"background": handle_file(str(d / "image.png")), "layers": [handle_file(str(tmp_path / "layer.png"))],
              "composite": None}
    filled, params, _ = client.predict(run="base", image=editor, method="repaint", nfe=8, seed=3, api_name="/inpaint")
    cli = _cli(tmp_path, "inpaint", str(runs / "base"), "--input", str(d / "image.png"), "--mask", str(d / "mask.png"),
               "--method", "repaint", "--nfe", "8", "--seed", "3")
    assert np.array_equal(np.asarray(Image.open(filled)).reshape(8, 8), cli["repaint"].reshape(8, 8))
    assert "Sampler: repaint" in params and "Seed: 3" in params
    editor["layers"] = []
    with pytest.raises(Exception, match="mask is empty"):
        client.predict(run="base", image=editor, method="repaint", nfe=8, seed=3, api_name="/inpaint")


@pytest.mark.slow  # drives a browser
@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="Debian's chromium is not installed (apt-get install chromium)")
def test_browser_inpaints_a_drawn_mask_as_the_cli(server, runs, tmp_path):
    """Upload an image in the Inpaint tab, paint a stroke over it, press Inpaint: the image shown equals
    ``denoisekit inpaint`` with the mask the app wrote beside it (the stroke: some pixels, not all)."""
    from playwright.sync_api import expect, sync_playwright

    d, outputs = runs.parent, Path(os.environ["DENOISEKIT_CACHE"]).parent / "outputs"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or shutil.which("chromium-browser"),
                                    headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)
            page.goto(server)
            page.get_by_role("tab", name="Inpaint").click()
            page.locator("#inpaint-nfe input").fill("8")
            page.locator("#inpaint-seed input").fill("3")
            page.locator("#inpaint-seed input").press("Tab")
            canvas = page.locator("#inpaint-image canvas").first
            expect(canvas).to_be_visible()
            page.wait_for_timeout(1500)  # the editor readies its canvas: an upload before that is dropped
            page.locator("#inpaint-image input[type=file]").first.set_input_files(str(d / "image.png"))
            expect(page.locator("#inpaint-image").get_by_text("Upload an image")).to_be_hidden()  # loaded
            page.wait_for_timeout(1500)
            box = canvas.bounding_box()
            x0, y0 = box["x"] + box["width"] / 2 - 20, box["y"] + box["height"] / 2  # the image, centred, is small
            page.mouse.move(x0, y0)
            page.mouse.down()
            for k in range(1, 11):
                page.mouse.move(x0 + 4 * k, y0, steps=2)
            page.mouse.up()
            page.locator("#inpaint").click()
            img = page.locator("#inpaint-result img").first
            try:
                expect(img).to_be_visible()
            except AssertionError:
                page.screenshot(path=str(tmp_path / "failed.png"), full_page=True)
                raise AssertionError(page.locator("body").inner_text()[-400:]) from None
            shown = page.request.get(img.get_attribute("src")).body()
            page.screenshot(path=str(tmp_path / "inpaint.png"), full_page=True)
        finally:
            browser.close()
    (tmp_path / "shown.png").write_bytes(shown)
    mask = sorted(outputs.glob("*/mask.png"), key=lambda f: f.stat().st_mtime)[-1]
    drawn = np.asarray(Image.open(mask)) > 0
    assert 0 < drawn.sum() < drawn.size
    cli = _cli(tmp_path, "inpaint", str(runs / "base"), "--input", str(d / "image.png"), "--mask", str(mask),
               "--method", "repaint", "--nfe", "8", "--seed", "3")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "shown.png")).reshape(8, 8), cli["repaint"].reshape(8, 8))
