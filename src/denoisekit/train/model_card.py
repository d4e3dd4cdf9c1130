"""A run's model card: ``README.md`` in the Hugging Face model-card layout (YAML front matter, then Markdown).

Written at the end of training (:class:`~denoisekit.train.trainer.Trainer`), by ``denoisekit import-diffusers``
and on demand by ``denoisekit card RUN``. Everything in it is read from the run directory: ``config.yaml`` (data,
model, process, condition, sample defaults), the latest checkpoint's ``state.json`` (step, training time, the runs
it depends on: ``init.from_run``, ``teacher.run``, a delta's base; see :mod:`denoisekit.engine.lineage`), its
weights (parameter count), ``log.csv`` (the last loss) and ``metrics.csv`` (the last evaluation's values).
The front matter has ``library_name: denoisekit``, ``tags``, ``datasets`` and, for runs from runs, ``base_model``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from ..engine.checkpoint import EMA_FILE, STATE_FILE, latest_checkpoint
from ..engine.runlog import read_log_rows
from ..io import write_text_atomic

CARD = "README.md"


def _parameters(weights: Path) -> int | None:
    """Parameter count of a safetensors file, from its header (no tensor is read)."""
    if not weights.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        total = 0
        for k in f.keys():
            n = 1
            for d in f.get_slice(k).get_shape():
                n *= d
            total += n
    return total


def _last_evaluation(run: Path) -> tuple[int | None, dict[str, str]]:
    rows = read_log_rows(run / "metrics.csv")
    if not rows:
        return None, {}
    step = max(int(r["step"]) for r in rows)
    return step, {r["name"]: r["value"] for r in rows if int(r["step"]) == step}


def _sample_commands(run: Path, kind: Any) -> list[str]:
    kinds = set(kind) if isinstance(kind, list) else {kind}
    extra = " --label all" if "class" in kinds else ' --prompt "a red circle"' if "text" in kinds else ""
    return [f"denoisekit sample {run}{extra} --n 16 --out samples.png",
            f"python -c 'import denoisekit; denoisekit.load(\"{run}\").generate(16).save(\"samples.png\")'"]


def _options(process: dict[str, Any]) -> dict[str, Any]:
    """A process section's own options (the YAML layout flattens them into the section)."""
    return {k: v for k, v in process.items() if k not in ("name", "prediction", "time_input", "sigma_data")}


def _yaml_list(key: str, values: list[str]) -> list[str]:
    return [f"{key}:", *[f"- {json.dumps(v)}" for v in values]] if values else []


def model_card(run_dir: str | os.PathLike[str], *, path: str | os.PathLike[str] | None = None,
               cpu_seconds: float | None = None) -> str:
    """The model card of run ``run_dir`` (module docstring); ``cpu_seconds``: the training process's CPU time, when
    the caller measured it (the trainer does); ``path``: where the run will be, for the heading and the commands
    (default: ``run_dir``; a run written under a temporary name gives its final one)."""
    run = Path(run_dir)
    shown = Path(path) if path is not None else run
    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    sec = {k: v if isinstance(v, dict) else {} for k, v in cfg.items()} if isinstance(cfg, dict) else {}
    ckpt = latest_checkpoint(run / "checkpoints")
    state: dict[str, Any] = {}
    if ckpt is not None and (ckpt / STATE_FILE).is_file():
        state = json.loads((ckpt / STATE_FILE).read_text())
    data, model, process = sec.get("data", {}), sec.get("model", {}), sec.get("process", {})
    condition, imported = sec.get("condition", {}).get("kind", "none"), state.get("imported")
    depends = state.get("depends") or []
    dataset = f"diffusers folder {imported['folder']}" if imported else str(data.get("name", "?"))
    tags = ["denoisekit", "diffusion", f"process-{process.get('name', '?')}", f"prediction-{process.get('prediction', '?')}"]
    tags += ["imported-from-diffusers"] if imported else []
    front = ["---", "library_name: denoisekit", *_yaml_list("tags", tags),
             *_yaml_list("datasets", [] if imported else [dataset]),
             *_yaml_list("base_model", [str(d["run"]) for d in depends]), "---", ""]

    params = _parameters(ckpt / EMA_FILE) if ckpt is not None else None
    model_opts = {k: v for k, v in model.items() if k not in ("name", "config")}
    lines = [f"# {shown.name}", "",
             "## Data", "", f"- {dataset}" + (f" (size {data['size']})" if data.get("size") else ""),
             f"- image shape (C, H, W): {tuple(state['image_shape']) if 'image_shape' in state else '?'}",
             f"- condition: {condition}", "",
             "## Model", "", f"- type: `{model.get('name', '?')}`"
             + (f" (diffusers `{imported['class']}`)" if imported else ""),
             f"- parameters: {params:,}" if params is not None else "- parameters: ?",
             f"- options: `{json.dumps(model_opts, sort_keys=True)}`", "",
             "## Process", "", f"- process: `{process.get('name', '?')}` `{json.dumps(_options(process), sort_keys=True)}`",
             f"- prediction: `{process.get('prediction', '?')}`, time input: `{process.get('time_input', 'model')}`", ""]
    lines += ["## Training", ""]
    if imported:
        lines += [f"- imported from `{imported['folder']}` ({imported['weights']}, sha256 {imported['sha256'][:12]}...)"
                  f" by `denoisekit import-diffusers`: not trained here", ""]
    else:
        train = sec.get("train", {})
        lines += [f"- steps: {state.get('step', '?')} of {train.get('steps', '?')} (batch {train.get('batch_size', '?')},"
                  f" recipe `{train.get('recipe', 'diffusion')}`)",
                  f"- wall time in training steps: {float(state.get('elapsed_s', 0.0)):.1f} s"]
        if cpu_seconds is not None:
            lines.append(f"- CPU time of the training process: {cpu_seconds:.1f} s")
        log = read_log_rows(run / "log.csv")
        if log and log[-1].get("loss"):
            lines.append(f"- last logged loss: {float(log[-1]['loss']):.4g} (step {log[-1]['step']})")
        lines.append("")
    step, metrics = _last_evaluation(run)
    lines += ["## Evaluation", ""]
    lines += ([f"Last evaluation (step {step}):", "", "| metric | value |", "|---|---|",
               *[f"| {k} | {float(v):.4g} |" for k, v in sorted(metrics.items())]] if metrics else ["No evaluation recorded."])
    lines += ["", "## How to sample", "", "```bash", *_sample_commands(shown, condition), "```", ""]
    lines += ["## Base runs", ""]
    lines += ([f"- {d['role']}: `{d['run']}` ({d['checkpoint']}, {d['weights']} weights, sha256 {d['sha256'][:12]}...)"
               for d in depends] if depends else ["None: this run depends on no other run."])
    return "\n".join(front + lines) + "\n"


def write_model_card(run_dir: str | os.PathLike[str], **options: Any) -> Path:
    """Write (atomically) the run's ``README.md`` (:func:`model_card`); returns its path."""
    path = Path(run_dir) / CARD
    write_text_atomic(path, model_card(run_dir, **options))
    return path
