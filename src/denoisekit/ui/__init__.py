"""The web UI (``denoisekit ui``): a Gradio app over the runs of a directory (:mod:`.app`), what its Generate
button does (:mod:`.jobs`), which runs it offers (:mod:`.runs`) and how it is served safely (:mod:`.server`).
Gradio is imported only when the app is built."""

from .jobs import Request, run_request
from .runs import RunLibrary, find_runs

__all__ = ["Request", "RunLibrary", "find_runs", "run_request"]
