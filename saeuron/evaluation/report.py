"""The evaluation report: what a person looks at — sample grids, a bar chart, the scores table —
as PNG files and one self-contained folder with an ``index.html`` that links them."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageDraw

from saeuron.atomic_files import write_text_atomic
from saeuron.console import logger
from saeuron.evaluation.metrics import ForgettingScores, SequentialStep


class ConceptSamples(NamedTuple):
    """Files to show for one forget model: rows of (label, [(original file, unlearned file)])."""

    name: str
    original_dir: Path
    unlearned_dir: Path
    rows: list[tuple[str, list[str]]]


def sample_grid(samples: ConceptSamples, cell: int = 96, label_width: int = 190) -> Image.Image:
    """For each row label: the original model's images above the unlearned model's."""
    columns = max(len(files) for _, files in samples.rows)
    pad = 4
    grid = Image.new("RGB", (label_width + columns * (cell + pad) + pad, len(samples.rows) * 2 * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    y = pad
    for label, files in samples.rows:
        for model, folder in (("original", samples.original_dir), ("unlearned", samples.unlearned_dir)):
            draw.text((pad, y + cell // 2 - 12), f"{label}\n{model}", fill="black")
            for i, name in enumerate(files):
                image = (
                    Image.open(folder / name).convert("RGB").resize((cell, cell), Image.NEAREST if cell >= 64 else Image.BILINEAR)
                )
                grid.paste(image, (label_width + i * (cell + pad), y))
            y += cell + pad
    return grid


def bar_chart(scores: Sequence[tuple[str, ForgettingScores]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, _ in scores]
    metrics = {"UA": [s.ua for _, s in scores], "IRA": [s.ira for _, s in scores], "CRA": [s.cra for _, s in scores]}
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(names) + 1.5), 3.2), dpi=110)
    width = 0.26
    for i, (metric, values) in enumerate(metrics.items()):
        ax.bar([x + (i - 1) * width for x in range(len(names))], values, width, label=metric)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy-based score")
    ax.legend(ncol=3, loc="lower right", fontsize=8)
    ax.set_title("UA / IRA / CRA per forget model")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def write_report(
    folder: str | Path,
    title: str,
    scores: Sequence[tuple[str, ForgettingScores]],
    averages: dict[str, dict[str, float]],
    fid: dict[str, float],
    fid_extractor: str,
    samples: Sequence[ConceptSamples],
    sequential: Sequence[SequentialStep] = (),
    notes: Sequence[str] = (),
    atlases: dict[str, Path] | None = None,
    drift: dict[str, float] | None = None,
) -> Path:
    """Writes PNGs, ``scores.json`` and ``index.html`` into ``folder``; returns the HTML path. ``atlases``: the feature
    atlas index of a forget model (``jobs/atlas.py``), linked from its row; ``drift``: per model, how much its kept
    images changed (``saeuron.evaluation.drift``)."""
    drift = drift or {}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bar_chart(scores, folder / "scores.png")
    grids = []
    for i, s in enumerate(samples):
        name = f"samples_{i:02d}.png"
        sample_grid(s).save(folder / name)
        grids.append((s.name, name))
    rows = [
        [
            name,
            s.kind,
            ", ".join(s.forgotten),
            _fmt(s.ua),
            _fmt(s.ira),
            _fmt(s.cra),
            _fmt(s.cra_styled),
            _fmt(s.cra_forgotten),
            _fmt(fid.get(name)),
            _fmt(drift.get(name)),
        ]
        for name, s in scores
    ]
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    parts.append("<h2>Scores per forget model</h2>")
    parts.append(
        _table(
            [
                "model",
                "kind",
                "forgotten",
                "UA",
                "IRA",
                "CRA",
                "CRA (styled images)",
                "CRA (forgotten style)",
                f"FID ({fid_extractor})",
                "drift (kept images)",
            ],
            rows,
        )
    )
    if "original" in fid:
        parts.append(
            f"<p>FID of the original model over all its styled images: {fid['original']:.3f} ({html.escape(fid_extractor)}).</p>"
        )
    parts.append("<h2>Averages</h2>")
    parts.append(
        _table(
            ["kind", *sorted({k for a in averages.values() for k in a})],
            [
                [kind, *(_fmt(a.get(k)) for k in sorted({k for a in averages.values() for k in a}))]
                for kind, a in averages.items()
            ],
        )
    )
    parts.append('<img src="scores.png" alt="UA, IRA and CRA per forget model">')
    if atlases:
        parts.append("<h2>Feature atlases: what each selected latent draws</h2><ul>")
        parts += [
            f'<li><a href="{html.escape(os.path.relpath(page, folder))}">{html.escape(name)}</a></li>'
            for name, page in atlases.items()
        ]
        parts.append("</ul>")
    if sequential:
        parts.append("<h2>Sequential unlearning (each step scored on its own model)</h2>")
        parts.append(
            _table(
                ["step", "forgotten so far", "UA per concept", "UA", "IRA", "CRA"],
                [
                    [
                        str(s.step),
                        ", ".join(s.forgotten),
                        ", ".join(f"{c} {v:.2f}" for c, v in s.ua_per_concept.items()),
                        _fmt(s.ua),
                        _fmt(s.ira),
                        _fmt(s.cra),
                    ]
                    for s in sequential
                ],
            )
        )
    parts.append("<h2>Samples: original model (upper) vs unlearned (lower)</h2>")
    for name, file in grids:
        parts.append(f'<h3>{html.escape(name)}</h3><img src="{file}" alt="samples of {html.escape(name)}">')
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #bbb;padding:.25em .6em;text-align:right}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%;display:block;margin:.5em 0}"
    )
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{style}</style></head>'
        f"<body>{''.join(parts)}</body></html>"
    )
    write_text_atomic(
        folder / "scores.json",
        json.dumps(
            {
                "scores": {name: s._asdict() for name, s in scores},
                "averages": averages,
                "fid": fid,
                "fid_extractor": fid_extractor,
                "drift": drift,
                "sequential": [s._asdict() for s in sequential],
            },
            indent=2,
        ),
    )
    write_text_atomic(folder / "index.html", page)
    return folder / "index.html"


def objective_heatmap(result, percentiles: Sequence[float], edits: Sequence[str], path: Path) -> None:
    """The search's objective over the (percentile × edit) grid, the edits by their labels (``edit_label``: "γ -2",
    "→none β5", "γ -0.25 cond"); each cell notes how many tuning prompts the trial scored before it ended (fewer than the budget:
    stopped early), the choice boxed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.full((len(percentiles), len(edits)), np.nan)
    prompts = np.zeros_like(values)
    for t in result.trials:
        i, j = list(percentiles).index(t["percentile"]), list(edits).index(t["edit"])
        values[i, j], prompts[i, j] = t["objective"], t["prompts"]
    fig, ax = plt.subplots(figsize=(1.1 * len(edits) + 2.2, 0.75 * len(percentiles) + 1.6), dpi=110)
    # auto aspect: with every anchor in the grid (25 columns, 4 rows) square cells left the figure mostly blank
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    budget = prompts.max()
    for i in range(len(percentiles)):
        for j in range(len(edits)):
            if not np.isnan(values[i, j]):
                note = "" if prompts[i, j] >= budget else f"\n({int(prompts[i, j])} pr.)"
                ax.text(
                    j,
                    i,
                    f"{values[i, j]:.2f}{note}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if values[i, j] < 0.6 else "black",
                )
    i, j = list(percentiles).index(result.percentile), list(edits).index(result.label)
    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(
        range(len(edits)), list(edits), rotation=45 if len(edits) > 6 else 0, ha="right" if len(edits) > 6 else "center"
    )
    ax.set_yticks(range(len(percentiles)), [f"{p:g}" for p in percentiles])
    ax.set_xlabel("edit: multiplier γ, or steering toward an anchor by β (cond: on the conditional CFG half only)")
    ax.set_ylabel("percentile p")
    ax.set_title(f"{result.concept}: search objective", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def atlas_pages(atlas_root: Path, names: Sequence[str]) -> dict[str, Path]:
    """The atlases written for these forget models in the study's default place (``<study_dir>/atlas/<name>``)."""
    return {name: atlas_root / name / "index.html" for name in names if (atlas_root / name / "index.html").is_file()}


def log_table(scores, averages, fid, extractor, drift=None) -> None:
    """The scores as console lines (the report holds the same as HTML)."""
    drift = drift or {}
    logger.info(f"{'model':<28} {'kind':<7} {'UA':>6} {'IRA':>6} {'CRA':>6} {'CRA-own':>7} {'FID':>8} {'drift':>6}")
    for name, s in scores:
        value = f"{fid[name]:8.2f}" if name in fid else f"{'–':>8}"
        own = f"{s.cra_forgotten:7.3f}" if s.cra_forgotten is not None else f"{'–':>7}"
        moved = f"{drift[name]:6.3f}" if name in drift else f"{'–':>6}"
        logger.info(f"{name:<28} {s.kind:<7} {s.ua:6.3f} {s.ira:6.3f} {s.cra:6.3f} {own} {value} {moved}")
    for kind, avg in averages.items():
        logger.info(f"{'mean (' + kind + ')':<28} {'':<7} {avg['UA']:6.3f} {avg['IRA']:6.3f} {avg['CRA']:6.3f}")
    if fid:
        logger.info(f"FID extractor: {extractor}" + (f"; original model {fid['original']:.2f}" if "original" in fid else ""))


def table_heatmap(
    table: dict[str, dict[str, float]], columns: list[str], path: Path, *, title: str, xlabel: str, vmax: float, digits: int = 2
) -> None:
    """{row: {column: value}} drawn as an annotated heat map from 0 to ``vmax`` (a missing cell blank): the benchmarks'
    per-concept tables (``benchmarks/kept_drift.py``, ``benchmarks/gate_selectivity.py``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.array([[table[row].get(c, np.nan) for c in columns] for row in table])
    fig, ax = plt.subplots(figsize=(0.8 * len(columns) + 3.5, 0.42 * len(table) + 1.8), dpi=110)
    image = ax.imshow(values, cmap="magma_r", vmin=0, vmax=vmax, aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        if not np.isnan(value):
            color = "white" if value > 0.55 * vmax else "black"
            ax.text(j, i, f"{value:.{digits}f}", ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(len(columns)), columns, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(table)), list(table), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
