"""``denoisekit ui`` in a real browser: the app on a free loopback port (a thread of this process) over toy runs
trained here; Playwright drives Debian's chromium (no browser download) to generate an image that must equal the
library's ``generate`` pixel for pixel; gradio_client round-trips the API and the PNG info; ``/file=`` traversal
probes are refused; nothing listens beyond loopback. Also the runs directory's and the CLI's bad input."""

import http.client
import io
import os
import re
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the UI needs gradio (the 'ui' extra)")

from denoisekit.cli import main  # noqa: E402
from denoisekit.data.transforms import tensor_to_uint8  # noqa: E402
from denoisekit.pipelines.generate import generate_images  # noqa: E402
from denoisekit.pipelines.png_info import parse_parameters, read_png_info  # noqa: E402
from denoisekit.train.run import load_model  # noqa: E402
from denoisekit.ui.runs import RunLibrary, find_runs  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_cli_image import CONFIG as CLASS_CONFIG, TINY as CLASS_TINY  # noqa: E402
from test_cli_text_edit import CONFIG as TEXT_CONFIG, TINY as TEXT_TINY  # noqa: E402
from test_cli_ux import SR  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROMPT = "a red circle"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui") / "runs"
    assert main(["train", TEXT_CONFIG, "--out", str(root / "text"), "--quiet", *TEXT_TINY]) == 0
    assert main(["train", CLASS_CONFIG, "--out", str(root / "digits"), "--quiet", *CLASS_TINY]) == 0
    (root.parent / "sr.yaml").write_text(SR % 8)  # an image-conditioned (Palette) run: x2 super-resolution to 8x8
    assert main(["train", str(root.parent / "sr.yaml"), "--out", str(root / "sr"), "--quiet"]) == 0
    (root / "broken" / "checkpoints").mkdir(parents=True)
    (root / "broken" / "config.yaml").write_text("model: [\n")
    return root


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    """``(url, outputs, secret)``: the app served as ``denoisekit ui`` serves it, with its cache in a temporary
    directory and a secret file beside the outputs directory."""
    from denoisekit.ui.server import ServeOptions, prepare

    base = tmp_path_factory.mktemp("serve")
    old = os.environ.get("DENOISEKIT_CACHE")
    os.environ["DENOISEKIT_CACHE"] = str(base / "cache")
    secret = base / "secret.txt"
    secret.write_text("top secret")
    app, kwargs = prepare(runs, ServeOptions(port=0, outputs=base / "outputs"))
    app.queue(default_concurrency_limit=1)
    _, url, _ = app.launch(prevent_thread_lock=True, **kwargs)
    yield url.rstrip("/"), base / "outputs", secret
    app.close()
    if old is None:
        os.environ.pop("DENOISEKIT_CACHE", None)
    else:
        os.environ["DENOISEKIT_CACHE"] = old


def _expected(run: Path, seed: int, nfe: int, **kwargs) -> np.ndarray:
    """The library's image for the UI's settings (the run's sampler, schedule and guidance scale)."""
    model = load_model(run)
    d = model.defaults
    out = generate_images(model, 1, sampler=d.sampler, schedule=d.schedule, nfe=nfe, seed=seed, batch_size=1,
                          cfg_scale=d.cfg_scale, **kwargs)
    return tensor_to_uint8(out.images)[0]


def _pixels(data: bytes | str | Path) -> np.ndarray:
    img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    arr = np.asarray(img)
    return arr[..., None] if arr.ndim == 2 else arr


@pytest.mark.slow  # trains two toy runs, drives a browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_browser_generates_the_librarys_image(server, runs, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, _, _ = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)  # a loaded machine: loading a run may take seconds
            page.goto(url)
            page.locator("#run input").click()
            page.get_by_role("option", name="text", exact=True).click()
            expect(page.locator("#run-status")).to_contain_text("text loaded")
            page.locator("#prompt textarea").fill(PROMPT)
            page.locator("#random-seed input").uncheck()
            page.locator("#seed input").fill("7")
            page.locator("#nfe input").fill("4")
            page.locator("#nfe input").press("Tab")
            page.locator("#generate").click()
            img = page.locator("#gallery img").first
            expect(img).to_be_visible()
            expect(page.locator("#parameters textarea")).to_have_value(re.compile("Seed: 7,"))
            shown = page.request.get(img.get_attribute("src")).body()
            assert page.locator("#seed input").input_value() == "7"  # the seed used, shown after generating
            page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)
            # the Info tab reads the PNG's parameters back into the controls (changed meanwhile)
            (tmp_path / "shown.png").write_bytes(shown)
            page.locator("#prompt textarea").fill("something else")
            page.locator("#seed input").fill("99")
            page.get_by_role("tab", name="Info").click()
            page.locator("#png-upload input[type=file]").set_input_files(str(tmp_path / "shown.png"))
            expect(page.locator("#info-parameters textarea")).to_have_value(re.compile("Seed: 7,"))
            page.locator("#send").click()
            page.get_by_role("tab", name="Generate").click()
            expect(page.locator("#prompt textarea")).to_have_value(PROMPT)
            expect(page.locator("#seed input")).to_have_value("7")
            assert page.locator("#nfe input").input_value() == "4"
            assert not page.locator("#random-seed input").is_checked()
        finally:
            browser.close()
    got = _pixels(shown)
    want = _expected(runs / "text", 7, 4, prompts=[PROMPT])
    assert got.shape == want.shape and np.array_equal(got, want)  # pixel-identical to the library's generate
    info = parse_parameters(read_png_info(io.BytesIO(shown)))
    assert (info["Prompt"], info["Seed"], info["NFE"], info["Model"]) == (PROMPT, "7", "4", "text")
    assert (tmp_path / "ui.png").stat().st_size > 0


@pytest.mark.slow  # trains two toy runs
def test_api_round_trip_and_png_info(server, runs):
    from gradio_client import Client, handle_file

    url, outputs, _ = server
    client = Client(url, verbose=False)
    gallery, seed, text, _ = generate(client, "digits", "3", cfg=2.0, seed=11, batch=2)
    assert seed == 11 and len(gallery) == 2 and [g["caption"] for g in gallery] == ["seed 11", "seed 12"]
    for i, g in enumerate(gallery):  # each image as the library makes it with seed 11 + i, and its info
        model = load_model(runs / "digits")
        want = tensor_to_uint8(generate_images(model, 1, labels=3, sampler="euler", schedule="karras", nfe=3,
                                               seed=11 + i, cfg_scale=2.0).images)[0]
        assert np.array_equal(_pixels(g["image"]), want)
        assert parse_parameters(read_png_info(g["image"]))["Seed"] == str(11 + i)
    assert len(list(outputs.rglob("*.png"))) >= 2  # written under the outputs directory
    read = client.predict(handle_file(gallery[0]["image"]), api_name="/read_info")
    assert read == text and "Class: 3" in read
    sent = client.predict(read, api_name="/send_to_generate")
    assert sent[0] == "digits" and sent[3] == "3" and sent[4] == "euler" and sent[6] == 3 and sent[9] == 11
    assert sent[-1] is False  # the seed is fixed: pressing Generate again makes the same image
    with pytest.raises(Exception, match="cannot be loaded"):  # a broken run: one line; the others still work
        generate(client, "broken")
    with pytest.raises(Exception, match="batch size must be in|greater than maximum value 16"):
        generate(client, "digits", "3", batch=99)
    assert generate(client, "digits", "3")[1] == 1


def generate(client, run: str, label=None, *, nfe: int = 3, cfg: float = 1.0, seed: int = 1, batch: int = 1,
             source=None, init_image=None, strength=0.6):
    """The /generate endpoint by its parameter names (a fixed seed; the sampler and schedule of these tests)."""
    return client.predict(run=run, prompt="", negative="", label=label, sampler="euler", schedule="karras", nfe=nfe,
                          cfg=cfg, rescale=0.0, seed=seed, batch=batch, random_seed=False, source=source,
                          init_image=init_image, strength=strength, api_name="/generate")


def _get(url: str, path: str) -> tuple[int, bytes]:
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", path)  # sent as written: no client-side normalisation of '..' or '%2F'
    resp = conn.getresponse()
    return resp.status, resp.read()


@pytest.mark.slow  # trains two toy runs
def test_traversal_probes_are_refused(server, runs):
    url, outputs, secret = server
    served = next(outputs.rglob("*.png"), None)
    if served is None:  # the API test made some; alone, make one
        from gradio_client import Client

        generate(Client(url, verbose=False), "digits", "1")
        served = next(outputs.rglob("*.png"))
    assert _get(url, f"/gradio_api/file={served}")[0] == 200  # the outputs directory is served
    probes = ["/file=/etc/passwd", "/gradio_api/file=/etc/passwd", f"/gradio_api/file={secret}",
              f"/gradio_api/file={runs / 'text' / 'config.yaml'}", f"/gradio_api/file={outputs}/../{secret.name}",
              f"/gradio_api/file={outputs}/%2e%2e/{secret.name}", "/gradio_api/file=../../../../../../etc/passwd",
              "/gradio_api/file=%2Fetc%2Fpasswd", "/gradio_api/file=..%2F..%2F..%2F..%2Fetc%2Fpasswd",
              "/gradio_api/file=%252Fetc%252Fpasswd", "/static/../../../../etc/passwd",
              "/gradio_api/file=" + str(Path.home() / ".bashrc")]
    for probe in probes:
        status, body = _get(url, probe)
        assert status in (403, 404), (probe, status)
        assert b"top secret" not in body and b"root:" not in body


def _other_address() -> str | None:
    """An IPv4 address of this machine that is not loopback, if it has one."""
    candidates = set()
    try:
        candidates.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            candidates.add(s.getsockname()[0])
        except OSError:
            pass
    return next((a for a in sorted(candidates) if not a.startswith("127.") and a != "0.0.0.0"), None)


@pytest.mark.slow  # trains two toy runs
def test_not_reachable_beyond_loopback(server):
    url, _, _ = server
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # the server is up on loopback
    address = _other_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to probe")
    with pytest.raises(OSError):
        socket.create_connection((address, port), timeout=3).close()


def test_runs_directory_rules(tmp_path):
    root = tmp_path / "runs"
    (root / "a" / "checkpoints").mkdir(parents=True)
    (root / "a" / "config.yaml").write_text("{}\n")
    (tmp_path / "outside" / "checkpoints").mkdir(parents=True)
    (tmp_path / "outside" / "config.yaml").write_text("{}\n")
    (root / "link").symlink_to(tmp_path / "outside")
    names, skipped = find_runs(root)
    assert names == ["a"] and len(skipped) == 1 and "link out of the runs directory" in skipped[0]
    lib = RunLibrary(root)
    for bad in ("link", "../outside", str(tmp_path / "outside"), "missing"):
        with pytest.raises(ValueError, match="not a run under the runs directory"):
            lib.path(bad)
    with pytest.raises(ValueError, match="run 'a' cannot be loaded: ") as e:
        lib.load("a")
    assert "\n" not in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert find_runs(empty) == ([], [])
    with pytest.raises(NotADirectoryError):
        find_runs(tmp_path / "nope")


def test_cli_refuses_exposure_without_auth(tmp_path, capsys):
    for flags in (["--listen"], ["--share"], ["--listen", "--auth", "nopassword"]):
        assert main(["ui", str(tmp_path), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--auth" in err
    assert main(["ui", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "runs").mkdir()
    assert main(["ui", str(tmp_path / "runs"), "--outputs", str(tmp_path / "runs" / "out")]) == 2
    assert "inside the runs directory" in capsys.readouterr().err


@pytest.mark.slow  # trains two toy runs
def test_progress_follows_the_sampler_and_cancel_stops_it(runs, tmp_path):
    import threading

    from denoisekit.ui.jobs import Cancelled, Request, run_request

    lib, seen = RunLibrary(runs), []
    req = Request(run="digits", label="2", sampler="euler", schedule="karras", nfe=5, seed=3, batch=2)
    res = run_request(lib, req, tmp_path / "out", progress=seen.append)
    assert seen == pytest.approx([k / 5 for k in range(1, 6)]) and res.seed == 3 and len(res.paths) == 2
    stop = threading.Event()

    def press_cancel_at_step_2(fraction: float) -> None:
        seen.append(fraction)
        if len(seen) == 7:
            stop.set()

    with pytest.raises(Cancelled):
        run_request(lib, req, tmp_path / "cancelled", progress=press_cancel_at_step_2, cancel=stop)
    assert len(seen) == 7 and not (tmp_path / "cancelled").exists()  # stopped at the next step, wrote nothing


@pytest.mark.slow  # trains two toy runs
def test_upload_limits(server, tmp_path):
    import httpx
    from gradio_client import Client, handle_file

    url, _, _ = server
    small = httpx.post(f"{url}/gradio_api/upload", files={"files": ("a.png", b"\0" * 1000, "image/png")}, timeout=30)
    big = httpx.post(f"{url}/gradio_api/upload", files={"files": ("a.png", b"\0" * (11 << 20), "image/png")},
                     timeout=30)
    assert (small.status_code, big.status_code) == (200, 413)  # the server's 10 MB limit
    Image.new("L", (5000, 5000)).save(tmp_path / "wide.png")  # 25 Mpx in a few kB
    client = Client(url, verbose=False)
    wide = client.predict(handle_file(str(tmp_path / "wide.png")), api_name="/read_info")
    assert wide.startswith("refused: 5000x5000")
    Image.new("L", (4, 4)).save(tmp_path / "plain.png")
    assert client.predict(handle_file(str(tmp_path / "plain.png")), api_name="/read_info") == \
        "this PNG has no generation parameters"


@pytest.mark.slow  # trains toy runs
def test_image_conditioned_run_restores_as_the_cli_does(server, runs, tmp_path):
    from gradio_client import Client, handle_file

    url, _, _ = server
    clean = tmp_path / "clean.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 8, dtype=np.uint8), (8, 1))).save(clean)
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="give a source image"):
        generate(client, "sr")
    gallery, seed, text, _ = generate(client, "sr", source=handle_file(str(clean)), seed=5)
    assert main(["sample", str(runs / "sr"), "--source", str(clean), "--sampler", "euler", "--schedule", "karras",
                 "--nfe", "3", "--seed", "5", "--out", f"{tmp_path}/cli/", "--quiet"]) == 0
    assert np.array_equal(_pixels(gallery[0]["image"]), _pixels(tmp_path / "cli" / "00000.png"))
    assert read_png_info(tmp_path / "cli" / "00000.png") == text  # the same parameters too
    Image.new("L", (4, 4)).save(tmp_path / "small.png")
    with pytest.raises(Exception, match="this run restores 8x8 images"):
        generate(client, "sr", source=handle_file(str(tmp_path / "small.png")))


@pytest.mark.slow  # trains toy runs
def test_img2img_is_the_cli_edit(server, runs, tmp_path):
    from gradio_client import Client, handle_file

    url, _, _ = server
    image = tmp_path / "input.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 8, dtype=np.uint8), (8, 1))).save(image)
    model = load_model(runs / "digits")
    gallery, _, text, _ = generate(Client(url, verbose=False), "digits", "2", nfe=6, cfg=model.defaults.cfg_scale,
                                   seed=4, init_image=handle_file(str(image)), strength=0.5)
    assert main(["edit", str(runs / "digits"), "--input", str(image), "--label", "2", "--strength", "0.5",
                 "--sampler", "euler", "--nfe", "6", "--seed", "4", "--out", str(tmp_path / "e.npz")]) == 0
    with np.load(tmp_path / "e.npz") as f:
        want = f["edit"][0]
    assert model.defaults.schedule == "karras" and np.array_equal(_pixels(gallery[0]["image"]), want)
    assert "Denoising strength: 0.5" in text
