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
from ..pipelines.inverse import METHODS
from .jobs import MAX_BATCH, MAX_NFE, Cancelled, Request, run_request
from .runs import RunLibrary

#: Upload limits of the Info tab (bytes, pixels): a PNG is read only when it is within both.
MAX_UPLOAD_BYTES, MAX_PIXELS = 8 << 20, 4096 * 4096
#: The Generate event's inputs, in order (the fields of Request, then the random-seed box).
CONTROLS = ("run", "prompt", "negative_prompt", "label", "sampler", "schedule", "nfe", "cfg_scale", "cfg_rescale",
            "seed", "batch", "random_seed", "source", "init_image", "strength", "lora1", "lora1_file", "lora1_weight",
            "lora2", "lora2_file", "lora2_weight", "controlnet", "control_image", "control_scale")
#: LoRA slots of the Adapters accordion (jobs.MAX_LORAS).
LORA_SLOTS = 2


def editor_files(value: Any, folder: Path) -> tuple[str, str]:
    """The image and the mask PNG (white = drawn = missing) of an image editor's value (``background`` and the
    ``layers`` drawn over it, PIL images), written under ``folder``; a one-line ``ValueError`` without them."""
    import numpy as np
    from PIL import Image

    background = value.get("background") if isinstance(value, dict) else None
    if background is None:
        raise ValueError("upload an image to inpaint")
    drawn = np.zeros((background.height, background.width), bool)
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        a = np.asarray(layer.convert("RGBA"))
        if a.shape[:2] != drawn.shape:
            raise ValueError(f"a mask layer is {a.shape[1]}x{a.shape[0]}, the image {drawn.shape[1]}x{drawn.shape[0]}")
        drawn |= a[..., 3] > 0
    if not drawn.any():
        raise ValueError("draw over the region to fill (the mask is empty)")
    folder.mkdir(parents=True, exist_ok=True)
    image, mask = folder / "image.png", folder / "mask.png"
    background.save(image)
    Image.fromarray(np.where(drawn, 255, 0).astype(np.uint8)).save(mask)
    return str(image), str(mask)


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
    try:
        loras, controlnets = library.adapters("lora"), library.adapters("controlnet")
    except OSError:
        loras, controlnets = [], []

    def adapter(name: str | None, upload: str | None) -> str | None:
        """An uploaded file as it is (Gradio's own copy), else a run or file named under the runs directory."""
        if upload:
            return str(upload)
        return str(library.file(name)) if name else None

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
                    init_image: str | None, strength: float, lora1: str | None = None,
                    lora1_file: str | None = None, lora1_weight: float = 1.0, lora2: str | None = None,
                    lora2_file: str | None = None, lora2_weight: float = 1.0, controlnet: str | None = None,
                    control_image: str | None = None, control_scale: float = 1.0,  # defaults: optional in the API
                    request: gr.Request = None, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        if not run:
            raise gr.Error(note or "pick a run", print_exception=False)
        event = cancels.setdefault(request.session_hash or "", threading.Event())
        event.clear()
        try:
            adapters = [(adapter(n, f), float(w or 0)) for n, f, w in ((lora1, lora1_file, lora1_weight),
                                                                      (lora2, lora2_file, lora2_weight))]
            control = adapter(controlnet, None)
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from None
        req = Request(loras=tuple((f, w) for f, w in adapters if f), controlnet=control,
                      control_image=control_image or None, control_scale=float(control_scale or 0), run=run, prompt=prompt or "", negative_prompt=negative or "",
                      label=None if label in (None, "") else str(label), sampler=sampler, schedule=schedule,
                      nfe=int(nfe or 0), cfg_scale=float(cfg or 0), cfg_rescale=float(rescale or 0),
                      seed=-1 if random_seed else int(seed or 0), batch=int(batch or 0),  # an empty box: 0
                      source=source or None, init_image=init_image or None, strength=float(strength or 0))
        progress(0.0, desc="sampling")
        try:
            for image in (source, init_image, control_image):
                if image:
                    check_image(image)
            res = run_request(library, req, outputs, progress=lambda f: progress(f, desc="sampling"), cancel=event)
        except Cancelled:
            raise gr.Error("cancelled", print_exception=False) from None
        except (ValueError, FloatingPointError) as e:
            raise gr.Error(str(e), print_exception=False) from None
        shown = [(str(p), f"seed {res.seed + i}") for i, p in enumerate(res.paths)]
        return shown, res.seed, res.parameters[0], f"{len(res.paths)} image(s) in {res.seconds:.2f} s, seed {res.seed}"

    def on_inpaint(run: str, image: Any, method: str, nfe: float, seed: float) -> tuple[Any, ...]:
        import shutil
        import tempfile

        if not run:
            raise gr.Error(note or "pick a run", print_exception=False)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                picture, mask = editor_files(image, Path(tmp))
                check_image(picture)
                res = run_request(library, Request(run=run, inpaint_image=picture, mask=mask, method=method,
                                                   nfe=int(nfe or 0), seed=int(seed or 0)), outputs)
                shutil.copyfile(mask, res.paths[0].parent / "mask.png")  # beside the result: the CLI's --mask
        except (ValueError, FloatingPointError) as e:
            raise gr.Error(str(e), print_exception=False) from None
        return str(res.paths[0]), res.parameters[0], f"inpainted in {res.seconds:.2f} s, seed {res.seed}"

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
                    with gr.Accordion("Adapters: LoRA, ControlNet / T2I-Adapter", open=False, elem_id="adapters"):
                        slots = []
                        for i in range(1, LORA_SLOTS + 1):
                            with gr.Row():
                                slots.append(gr.Dropdown(loras, value=None, allow_custom_value=True,
                                                         label=f"LoRA {i} (a lora run, or a .safetensors file under "
                                                         "the runs directory)", elem_id=f"lora{i}"))
                                slots.append(gr.File(label=f"or upload LoRA {i}", file_types=[".safetensors"],
                                                     type="filepath", elem_id=f"lora{i}-file"))
                                slots.append(gr.Slider(-2, 2, value=1, step=0.05, label=f"LoRA {i} weight",
                                                       elem_id=f"lora{i}-weight"))
                        controlnet = gr.Dropdown(controlnets, value=None, label="ControlNet / T2I-Adapter (a control "
                                                 "run of the chosen run)", elem_id="controlnet")
                        control_image = gr.Image(type="filepath", label="Control image (grayscale, at the run's "
                                                 "size x the module's downsampling)", sources=["upload"],
                                                 elem_id="control-image", format="png", image_mode=None)
                        control_scale = gr.Slider(0, 2, value=1, step=0.05, label="Control scale (0: the base)",
                                                  elem_id="control-scale")
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
        with gr.Tab("Inpaint"):
            with gr.Row():
                with gr.Column(scale=1):
                    inpaint_run = gr.Dropdown(names, value=names[0] if names else None, label="Run (a pixel run)",
                                              elem_id="inpaint-run")
                    editor = gr.ImageMask(type="pil", label="Image (the run's size): draw over the region to fill",
                                          sources=["upload"], format="png", image_mode=None, layers=False,
                                          brush=gr.Brush(default_size=2, colors=["#ffffff"], color_mode="fixed"),
                                          elem_id="inpaint-image")  # a fine brush: the runs' images are small
                    with gr.Row():
                        method = gr.Dropdown(list(METHODS), value="repaint", label="Method", elem_id="inpaint-method")
                        inpaint_nfe = gr.Number(100, label="NFE", precision=0, minimum=1, maximum=MAX_NFE,
                                                elem_id="inpaint-nfe")
                        inpaint_seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="inpaint-seed")
                    inpaint_go = gr.Button("Inpaint", variant="primary", elem_id="inpaint")
                with gr.Column(scale=1):
                    filled = gr.Image(label="Result", format="png", elem_id="inpaint-result", interactive=False)
                    inpaint_timing = gr.Markdown(elem_id="inpaint-timing")
                    inpaint_params = gr.Textbox(label="Parameters", lines=3, elem_id="inpaint-parameters",
                                                interactive=False)
        with gr.Tab("Info"):
            upload = gr.File(label="PNG", file_types=[".png"], type="filepath", elem_id="png-upload")
            info = gr.Textbox(label="Parameters", lines=4, elem_id="info-parameters")
            send = gr.Button("Send to Generate", elem_id="send")
        run_outputs = [status, prompt, negative, label, sampler, schedule, nfe, cfg, rescale, source, img2img]
        run.change(on_run, run, run_outputs, api_visibility="private")  # the page's own: not an API endpoint
        app.load(on_run, run, run_outputs, api_visibility="private")
        controls = [run, prompt, negative, label, sampler, schedule, nfe, cfg, rescale, seed, batch, random_seed,
                    source, init_image, strength, *slots, controlnet, control_image, control_scale]  # CONTROLS
        job = go.click(on_generate, controls, [gallery, seed, params, timing], api_name="generate", concurrency_limit=1)
        inpaint_go.click(on_inpaint, [inpaint_run, editor, method, inpaint_nfe, inpaint_seed],
                         [filled, inpaint_params, inpaint_timing], api_name="inpaint", concurrency_limit=1)
        stop.click(on_cancel, None, None, cancels=[job], api_name="cancel")
        upload.change(lambda f: read_upload(f), upload, info, api_name="read_info")
        send.click(on_send, info, [run, prompt, negative, label, sampler, schedule, nfe, cfg, rescale, seed,
                                   random_seed], api_name="send_to_generate")
    return app
