"""The Gradio app: a Generate tab over the runs of a :class:`~denoisekit.ui.runs.RunLibrary` and an Info tab
that reads a PNG's parameters back into the controls.

A new control (a LoRA weight, a ControlNet image) is a component in :func:`_generate_tab`, a field of
:class:`~denoisekit.ui.jobs.Request` and an input of the Generate event: ``CONTROLS`` lists them in order.
"""

# No "from __future__ import annotations": Gradio finds gr.Request and gr.Progress parameters by their annotations.

import threading
from pathlib import Path
from typing import Any

from ..pipelines.png_info import NEGATIVE, PROMPT, parse_parameters, read_png_info
from ..samplers import SAMPLERS
from ..schedules import SCHEDULES
from .jobs import MAX_BATCH, MAX_NFE, Cancelled, Request, run_request
from .runs import RunLibrary

#: Upload limits of the Info tab (bytes, pixels): a PNG is read only when it is within both.
MAX_UPLOAD_BYTES, MAX_PIXELS = 8 << 20, 4096 * 4096
#: The Generate event's inputs, in order (the fields of Request, then the random-seed box).
CONTROLS = ("run", "prompt", "negative_prompt", "label", "sampler", "schedule", "nfe", "cfg_scale", "cfg_rescale",
            "seed", "batch", "random_seed", "source", "init_image", "strength")


def read_upload(path: str | Path | None) -> str:
    """The parameters text of an uploaded PNG, checked against the upload limits; a one-line message otherwise."""
    from PIL import Image

    if not path:
        return ""
    p = Path(path)
    if p.stat().st_size > MAX_UPLOAD_BYTES:
        return f"refused: the file is over {MAX_UPLOAD_BYTES >> 20} MiB"
    try:
        with Image.open(p) as img:
            if img.format != "PNG":
                return f"refused: not a PNG ({img.format})"
            if img.width * img.height > MAX_PIXELS:
                return f"refused: {img.width}x{img.height} is over {MAX_PIXELS} pixels"
        return read_png_info(p) or "this PNG has no generation parameters"
    except ValueError as e:
        return f"refused: {e}"


def check_image(path: str | Path) -> None:
    """An uploaded image within the upload limits, else a one-line ``ValueError``."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if p.stat().st_size > MAX_UPLOAD_BYTES:
        raise ValueError(f"the image is over {MAX_UPLOAD_BYTES >> 20} MiB")
    try:
        with Image.open(p) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ValueError(f"the image is {img.width}x{img.height}, over {MAX_PIXELS} pixels")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"not a readable image ({e})") from None


def build_app(library: RunLibrary, outputs: Path) -> Any:
    """The ``gr.Blocks`` app; images go under ``outputs``."""
    import gradio as gr

    outputs = Path(outputs).resolve()
    try:
        names, skipped = library.names()
        note = "" if names else (f"No runs found under `{library.root}`: train one with `denoisekit train CONFIG "
                                 f"--out {library.root}/NAME`, then reload.")
    except (NotADirectoryError, OSError) as e:
        names, skipped, note = [], [], f"The runs directory cannot be read: {e}"
    cancels: dict[str, threading.Event] = {}

    def on_run(name: str | None) -> list[Any]:
        if not name:
            return [gr.update(value=note)] + [gr.update()] * 10
        try:
            d = library.describe(library.load(name))
        except ValueError as e:
            return [gr.update(value=f"**{e}**")] + [gr.update()] * 10
        kind = f"condition: {d['kind']}" + (": restores a source image" if d["image"] else "")
        return [gr.update(value=f"`{name}` loaded ({kind})"),
                gr.update(visible=d["text"], value=d["prompts"][0] if d["prompts"] else ""),
                gr.update(visible=d["text"]),
                gr.update(visible=d["class"], choices=[(f"{i} {c}", str(i)) for i, c in enumerate(d["classes"])],
                          value="0" if d["class"] else None),
                gr.update(value=d["sampler"]), gr.update(value=d["schedule"]), gr.update(value=d["nfe"]),
                gr.update(value=d["cfg_scale"], interactive=d["guided"]), gr.update(interactive=d["guided"]),
                gr.update(visible=d["image"]), gr.update(visible=not d["image"])]

    def on_generate(run: str, prompt: str, negative: str, label: Any, sampler: str, schedule: str, nfe: float,
                    cfg: float, rescale: float, seed: float, batch: float, random_seed: bool, source: str | None,
                    init_image: str | None, strength: float, request: gr.Request, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        if not run:
            raise gr.Error(note or "pick a run", print_exception=False)
        event = cancels.setdefault(request.session_hash or "", threading.Event())
        event.clear()
        req = Request(run=run, prompt=prompt or "", negative_prompt=negative or "",
                      label=None if label in (None, "") else str(label), sampler=sampler, schedule=schedule,
                      nfe=int(nfe or 0), cfg_scale=float(cfg or 0), cfg_rescale=float(rescale or 0),
                      seed=-1 if random_seed else int(seed or 0), batch=int(batch or 0),  # an empty box: 0
                      source=source or None, init_image=init_image or None, strength=float(strength or 0))
        progress(0.0, desc="sampling")
        try:
            for image in (source, init_image):
                if image:
                    check_image(image)
            res = run_request(library, req, outputs, progress=lambda f: progress(f, desc="sampling"), cancel=event)
        except Cancelled:
            raise gr.Error("cancelled", print_exception=False) from None
        except (ValueError, FloatingPointError) as e:
            raise gr.Error(str(e), print_exception=False) from None
        shown = [(str(p), f"seed {res.seed + i}") for i, p in enumerate(res.paths)]
        return shown, res.seed, res.parameters[0], f"{len(res.paths)} image(s) in {res.seconds:.2f} s, seed {res.seed}"

    def on_cancel(request: gr.Request) -> None:
        cancels.setdefault(request.session_hash or "", threading.Event()).set()

    def on_send(text: str) -> list[Any]:
        try:
            p = parse_parameters(text or "")
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from None
        run = next((n for n in names if Path(n).name == p.get("Model")), None)
        num = {k: p[k] for k in ("NFE", "CFG scale", "CFG rescale", "Seed") if k in p}
        return [run if run else gr.update(), p.get(PROMPT, ""), p.get(NEGATIVE, ""),
                p["Class"] if "Class" in p else gr.update(),
                p["Sampler"] if p.get("Sampler") in SAMPLERS else gr.update(),
                p["Schedule"] if p.get("Schedule") in SCHEDULES else gr.update(),
                int(num["NFE"]) if "NFE" in num else gr.update(),
                float(num["CFG scale"]) if "CFG scale" in num else gr.update(),
                float(num.get("CFG rescale", 0.0)), int(num["Seed"]) if "Seed" in num else gr.update(), False]

    with gr.Blocks(title="denoisekit", analytics_enabled=False) as app:
        gr.Markdown("## denoisekit")
        status = gr.Markdown(note or "\n".join(f"- {s}" for s in skipped), elem_id="run-status")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    run = gr.Dropdown(names, value=names[0] if names else None, label="Run", elem_id="run")
                    prompt = gr.Textbox(label="Prompt", elem_id="prompt", max_length=2000)
                    negative = gr.Textbox(label="Negative prompt", elem_id="negative-prompt", max_length=2000)
                    label = gr.Dropdown([], label="Class (index or name)", elem_id="label", visible=False,
                                        allow_custom_value=True)
                    source = gr.Image(type="filepath", label="Source image (a clean image at the run's size: it is "
                                      "degraded by the run's task, then restored)", sources=["upload"],
                                      elem_id="source", visible=False, format="png", image_mode=None)
                    with gr.Accordion("img2img (SDEdit): start from an image", open=False,
                                      elem_id="img2img") as img2img:
                        init_image = gr.Image(type="filepath", label="Input image (the run's image size)",
                                              sources=["upload"], elem_id="init-image", format="png",
                                              image_mode=None)
                        strength = gr.Slider(0, 1, value=0.6, step=0.05, label="Denoising strength (0: the input, "
                                             "1: a new sample)", elem_id="strength")
                    with gr.Row():
                        sampler = gr.Dropdown(sorted(SAMPLERS), value="dpmpp_2m", label="Sampler", elem_id="sampler")
                        schedule = gr.Dropdown(sorted(SCHEDULES), value="karras", label="Schedule", elem_id="schedule")
                    with gr.Row():
                        nfe = gr.Number(20, label="NFE", precision=0, minimum=1, maximum=MAX_NFE, elem_id="nfe")
                        batch = gr.Slider(1, MAX_BATCH, value=1, step=1, label="Batch size", elem_id="batch")
                    with gr.Row():
                        cfg = gr.Slider(0, 20, value=1, step=0.1, label="CFG scale", elem_id="cfg")
                        rescale = gr.Slider(0, 1, value=0, step=0.05, label="CFG rescale", elem_id="rescale")
                    with gr.Row():
                        random_seed = gr.Checkbox(True, label="Random seed", elem_id="random-seed")
                        seed = gr.Number(0, label="Seed (the last one used)", precision=0, minimum=0,
                                         elem_id="seed")
                    with gr.Row():
                        go = gr.Button("Generate", variant="primary", elem_id="generate")
                        stop = gr.Button("Cancel", elem_id="cancel")
                with gr.Column(scale=1):
                    gallery = gr.Gallery(label="Images", elem_id="gallery", columns=4, format="png")
                    timing = gr.Markdown(elem_id="timing")
                    params = gr.Textbox(label="Parameters", lines=3, elem_id="parameters", interactive=False)
        with gr.Tab("Info"):
            upload = gr.File(label="PNG", file_types=[".png"], type="filepath", elem_id="png-upload")
            info = gr.Textbox(label="Parameters", lines=4, elem_id="info-parameters")
            send = gr.Button("Send to Generate", elem_id="send")
        run_outputs = [status, prompt, negative, label, sampler, schedule, nfe, cfg, rescale, source, img2img]
        run.change(on_run, run, run_outputs, api_visibility="private")  # the page's own: not an API endpoint
        app.load(on_run, run, run_outputs, api_visibility="private")
        controls = [run, prompt, negative, label, sampler, schedule, nfe, cfg, rescale, seed, batch, random_seed,
                    source, init_image, strength]  # CONTROLS
        job = go.click(on_generate, controls, [gallery, seed, params, timing], api_name="generate", concurrency_limit=1)
        stop.click(on_cancel, None, None, cancels=[job], api_name="cancel")
        upload.change(lambda f: read_upload(f), upload, info, api_name="read_info")
        send.click(on_send, info, [run, prompt, negative, label, sampler, schedule, nfe, cfg, rescale, seed,
                                   random_seed], api_name="send_to_generate")
    return app
