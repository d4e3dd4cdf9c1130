"""The FID-against-NFE figure of the few-step benchmarks, drawn from their recorded results.

``benchmarks/fewstep.py --write`` records its rows in ``benchmarks/fewstep.json`` (8x8 digits, pixel space) and
``benchmarks/fewstep_latent.py --write`` in ``benchmarks/fewstep_latent.json`` (64x64 shapes, latent space); each
holds a ``title``, the real-vs-real ``floor`` and ``rows`` of ``name``, ``nfe`` and ``fid``. One panel per file:
every method a line over its step counts (a single point for a fixed-NFE row), the floor dotted.

    python benchmarks/fewstep_plot.py benchmarks/fewstep.json benchmarks/fewstep_latent.json --out fewstep-fid.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def load_record(path: Path) -> dict[str, Any]:
    """A results file, checked for the keys the figure reads (one line naming the file and what is missing)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{path}: cannot read a few-step results file ({e})") from None
    missing = {"title", "floor", "rows"} - set(record) if isinstance(record, dict) else {"title", "floor", "rows"}
    if missing or not all({"name", "nfe", "fid"} <= set(r) for r in record["rows"]):
        raise SystemExit(f"{path}: not a few-step results file (needs title, floor and rows of name, nfe, fid)")
    return record


def plot(records: list[dict[str, Any]], out: Path) -> None:
    """One log-log panel of FID against NFE per record, written to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(records), figsize=(6.2 * len(records), 4.4), squeeze=False)
    for ax, record in zip(axes[0], records):
        rows = record["rows"]
        for name in dict.fromkeys(r["name"] for r in rows):
            pts = sorted((r["nfe"], r["fid"]) for r in rows if r["name"] == name)
            teacher = name.startswith("teacher")
            ax.plot(*zip(*pts), marker="s" if teacher else "o", ms=4, label=name, ls=("--" if teacher else "-")
                    if len(pts) > 1 else "none")
        ax.axhline(record["floor"], color="grey", ls=":", label="real vs real (floor)")
        ticks = sorted({r["nfe"] for r in rows})
        ax.set(xscale="log", yscale="log", xlabel="NFE (network evaluations per sample)", ylabel="FID",
               title=record["title"])
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, nargs="+", help="results files written by the few-step benchmarks")
    p.add_argument("--out", type=Path, required=True, help="the figure (.png)")
    a = p.parse_args()
    plot([load_record(f) for f in a.results], a.out)
    print(a.out)


if __name__ == "__main__":
    main()
