"""The atlas's files: per latent a JSON, two pictures and an HTML page; an index sorted by specificity.

Heatmaps of one latent share one colour scale (0 to its peak over every image), drawn cell by cell (no smoothing);
a latent silent in an image is drawn as zeros.
"""

from __future__ import annotations

import html
import io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from saeuron.atlas.analysis import BANDS, LatentSummary, Recording
from saeuron.atomic_files import write_text_atomic


def page_name(latent: int) -> str:
    return f"latent_{latent:06d}"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def images_picture(rec: Recording, column: int, summary: LatentSummary, heat_labels: list[str], path: Path) -> None:
    """Top images with their patch maps at the heat steps beneath; then the bands, each image with its peak."""
    plt = _plt()
    top, bands = summary.top, summary.bands
    cols = max(len(top), max((len(b) for b in bands), default=0), 1)
    rows = 1 + len(heat_labels) + len(bands)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols + 0.6, 1.3 * rows), dpi=90, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    scale = summary.peak if summary.peak > 0 else 1.0
    peaks = rec.max_by_step[:, :, column].max(1)
    for c, row in enumerate(top):
        axes[0, c].imshow(Image.open(io.BytesIO(rec.images[row])))
        axes[0, c].set_title(f"{rec.labels[row]}\n{peaks[row]:.2f}", fontsize=6)
        for s, label in enumerate(heat_labels):
            grid = rec.heat[row, s, :, column].reshape(rec.side, rec.side)
            axes[1 + s, c].imshow(grid, vmin=0, vmax=scale, cmap="magma", interpolation="nearest")
            if c == 0:
                axes[1 + s, c].set_title(label, fontsize=6, loc="left")
    for b, members in enumerate(bands):
        for c, row in enumerate(members):
            ax = axes[1 + len(heat_labels) + b, c]
            ax.imshow(Image.open(io.BytesIO(rec.images[row])))
            ax.set_title(f"{rec.labels[row]} {peaks[row]:.2f}", fontsize=6)
        low, high = BANDS[b]
        axes[1 + len(heat_labels) + b, 0].text(
            -0.1, 0.5, f"{low:.0%}–{high:.0%}", transform=axes[1 + len(heat_labels) + b, 0].transAxes, ha="right", fontsize=6
        )
    fig.suptitle(f"latent {summary.latent}: top images, patch maps (scale 0–{summary.peak:.2f}), bands", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def curves_picture(
    rec: Recording, summary: LatentSummary, recipe_rows: dict[int, float], score: dict[int, float], path: Path
) -> None:
    """Mean and peak per step on the concept against the other concepts; the recipe's threshold where it selected
    the latent (and the selection score when statistics were given); the density of its per-image peaks."""
    plt = _plt()
    fig, (ax, hist) = plt.subplots(1, 2, figsize=(8.5, 3.0), dpi=100, gridspec_kw={"width_ratios": [3, 1]})
    t = rec.timesteps
    c = summary.curves
    if c["target_mean"]:
        ax.plot(t, c["target_mean"], color="tab:red", label=f"{summary.concept}: mean")
        ax.plot(t, c["target_max"], color="tab:red", linestyle=":", label=f"{summary.concept}: peak")
    ax.plot(t, c["others_median"], color="tab:blue", label="other concepts: median of means")
    ax.fill_between(t, c["others_q25"], c["others_q75"], color="tab:blue", alpha=0.2, label="other concepts: quartiles")
    if recipe_rows:
        steps = sorted(recipe_rows)
        ax.scatter(steps, [recipe_rows[s] for s in steps], color="black", marker="_", s=120, label="recipe: threshold (selected)")
    if score:
        twin = ax.twinx()
        steps = sorted(score)
        twin.plot(steps, [score[s] for s in steps], color="tab:green", alpha=0.6, linewidth=1)
        twin.set_ylabel("selection score", fontsize=7, color="tab:green")
    ax.set_xlim(max(t) + 10, min(t) - 10)  # noisy first, as sampling runs
    ax.set_xlabel("timestep")
    ax.set_ylabel("activation")
    ax.legend(fontsize=6, loc="upper left")
    hist.bar(range(len(summary.density)), summary.density, color="gray")
    hist.set_title(f"fires in {summary.firing_share:.0%} of images", fontsize=7)
    hist.set_xlabel("peak (10 bins to max)", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_latent_page(folder: Path, summary: LatentSummary, extra: dict | None = None) -> None:
    """The latent's JSON (written last: its presence means the page is done) and HTML."""
    name = page_name(summary.latent)
    record = {**asdict(summary), **(extra or {})}
    numbers = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in record.items()
        if k in ("concept", "peak", "firing_share", "specificity", "top_concept_share") or k.startswith("effect")
    )
    effect = f'<img src="{name}_effect.png" alt="effect">' if (folder / f"{name}_effect.png").exists() else ""
    write_text_atomic(
        folder / f"{name}.html",
        f"<!doctype html><html><head><meta charset=utf-8><title>latent {summary.latent}</title></head><body>"
        f'<p><a href="index.html">index</a></p><h1>latent {summary.latent} ({html.escape(summary.concept)})</h1>'
        f"<table>{numbers}</table>"
        f'<img src="{name}_images.png" alt="top images"><br><img src="{name}_curves.png" alt="timesteps"><br>{effect}'
        "</body></html>",
    )
    write_text_atomic(folder / f"{name}.json", json.dumps(record, indent=1, default=_plain))


def write_index(folder: Path, title: str, latents: list[int]) -> list[dict]:
    """The latents' pages, most concept-specific first (a page of a latent no longer chosen stays out); a box filters
    by concept."""
    files = [folder / f"{page_name(f)}.json" for f in latents]
    records = [json.loads(f.read_text()) for f in files if f.is_file()]
    records.sort(key=lambda r: (-(r["specificity"] if r["specificity"] == r["specificity"] else -1), r["latent"]))
    rows = "".join(
        f'<tr data-concept="{html.escape(r["concept"].lower())}"><td><a href="{page_name(r["latent"])}.html">{r["latent"]}</a></td>'
        f"<td>{html.escape(r['concept'])}</td><td>{_fmt(r['specificity'])}</td><td>{_fmt(r['top_concept_share'])}</td>"
        f"<td>{_fmt(r['firing_share'])}</td><td>{_fmt(r.get('effect_probability_drop'))}</td></tr>"
        for r in records
    )
    groups = json.loads((folder / "groups.json").read_text()) if (folder / "groups.json").is_file() else {}
    factors = list(next(iter(groups.values()))["probability"]) if groups else []
    together = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{len(g['latents'])}</td><td>{g['images']}</td>"
        + "".join(f"<td>{_fmt(g['probability'].get(f))}</td>" for f in factors)
        + "</tr>"
        for c, g in groups.items()
    )
    if together:
        together = (
            "<h2>All of a concept's latents here scaled together: the judge's probability of the concept</h2><table><tr>"
            "<th>concept</th><th>latents</th><th>images</th>"
            + "".join(f"<th>x{f}</th>" for f in factors)
            + f"</tr>{together}</table>"
        )
    script = (
        "<script>function f(v){for(const r of document.querySelectorAll('tbody tr'))"
        "r.style.display=r.dataset.concept.includes(v.toLowerCase())?'':'none'}</script>"
    )
    write_text_atomic(
        folder / "index.html",
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1>{together}{script}"
        '<p>concept: <input id="q" oninput="f(this.value)" placeholder="filter"></p>'
        "<table><thead><tr><th>latent</th><th>concept</th><th>specificity (AUROC)</th><th>top images of the concept</th>"
        f"<th>fires in</th><th>ablation: judge probability drop</th></tr></thead><tbody>{rows}</tbody></table></body></html>",
    )
    return records


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if value != value else f"{value:.3f}"
    return str(value)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value)} is not JSON")
