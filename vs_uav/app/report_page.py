"""The quality report's files: one self-contained HTML page (plots and crops embedded as PNG
data, no scripts, no links: it opens offline), or a one-page PNG summary, each with the same
numbers as JSON and CSV beside it (``report.html`` -> ``report.json``, ``report.csv``).

Plots are drawn with matplotlib (its Agg back end: no screen needed); scene cuts are the
dashed vertical lines.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

# A report (:class:`vs_uav.app.report.Report`) is given to these functions, never imported here:
# the job imports this module.
Report = Any
Crop = Any

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
BASELINE = "#7f7f7f"


def write_report(report: Report, path: Path) -> list[Path]:
    """The file ``path`` asks for (by its extension) and, beside an HTML or PNG one, the JSON and
    CSV; each written whole, then renamed into place. The files written."""
    suffix = path.suffix.lower()
    written = []
    if suffix in (".html", ".png", ".json"):
        written.append(_atomic(path.with_suffix(".json"), lambda f: f.write(
            json.dumps(report.to_dict(), indent=1, allow_nan=False).encode())))
    if suffix in (".html", ".png", ".csv"):
        written.append(_atomic(path.with_suffix(".csv"), lambda f: f.write(frame_table(report).encode())))
    if suffix == ".html":
        written.append(_atomic(path, lambda f: f.write(page(report).encode())))
    elif suffix == ".png":
        written.append(_atomic(path, lambda f: f.write(summary_png(report))))
    return [p for p in written if p == path] + [p for p in written if p != path]


def _atomic(path: Path, write: Callable[[Any], Any]) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)
    return path


# -- the numbers -------------------------------------------------------------------------------------

def _timecodes(report: Report) -> list[str]:
    from vs_uav.media.timecode import shift_timecode

    m = report.measurements
    try:
        return [shift_timecode(m.timecode or "00:00:00:00", t, m.fps) for t in range(m.frames)]
    except ValueError:  # an unknown rate
        return [""] * m.frames


def _num(value: float, places: int = 4) -> str:
    return "" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{places}f}"


def frame_table(report: Report) -> str:
    """The CSV: one row per output and frame."""
    from vs_uav.media.quality import flicker

    m = report.measurements
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["output", "frame", "timecode", "scene", "psnr_lr", "ssim_lr", "psnr_ref", "ssim_ref", "lpips_ref", "ewarp",
                "ewarp_bicubic", "flicker", "flicker_source", "contrast_flicker", "contrast_flicker_source",
                "mean_r", "mean_g", "mean_b", "source_mean_r", "source_mean_g", "source_mean_b",
                "spread_r", "spread_g", "spread_b", "source_spread_r", "source_spread_g", "source_spread_b"])
    timecodes = _timecodes(report)
    scene = [sum(1 for s in m.starts if s <= t) - 1 for t in range(m.frames)]
    src_luma, src_contrast = flicker(m, m.source)
    for series in m.outputs:
        luma, contrast = flicker(m, series)
        ref, lp = bool(series.psnr_ref), bool(series.lpips_ref)
        for t in range(m.frames):
            w.writerow([series.name, t, timecodes[t], scene[t], _num(series.psnr[t]), _num(series.ssim[t], 6),
                        _num(series.psnr_ref[t]) if ref else "", _num(series.ssim_ref[t], 6) if ref else "",
                        _num(series.lpips_ref[t], 6) if lp else "",
                        _num(series.ewarp[t]), _num(m.bicubic.ewarp[t]), _num(luma[t]), _num(src_luma[t]),
                        _num(contrast[t]), _num(src_contrast[t]), *map(_num, series.mean[t]),
                        *map(_num, m.source.mean[t]), *map(_num, series.spread[t]), *map(_num, m.source.spread[t])])
    return out.getvalue()


# -- the plots ----------------------------------------------------------------------------------------

def _figure(ratios: Sequence[float], height: float = 2.6):
    """A figure of one column of axes, their heights in ``ratios`` (matplotlib's own Figure: no
    pyplot state, no screen)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, height * sum(ratios)), layout="constrained")
    grid = fig.add_gridspec(len(ratios), 1, height_ratios=list(ratios))
    return fig, [fig.add_subplot(grid[i, 0]) for i in range(len(ratios))]


def _cuts(ax, starts: Sequence[int]) -> None:
    for s in starts[1:]:
        ax.axvline(s - 0.5, color="#444444", linestyle="--", linewidth=0.8)


def _series(values: Sequence[float]) -> list[float]:
    return [math.nan if v is None else v for v in values]


def plot_measures(report: Report, axes: Sequence) -> None:
    """Fidelity, stability, flicker over the frames; colour shift per scene."""
    from vs_uav.media.quality import figures, flicker, scene_ranges

    m = report.measurements
    t = list(range(m.frames))
    names = [Path(s.name).name for s in m.outputs]
    fid, warp, flick, colour = axes
    for k, series in enumerate(m.outputs):
        c = COLOURS[k % len(COLOURS)]
        fid.plot(t, _series(series.psnr), color=c, label=names[k])
        warp.plot(t, _series(series.ewarp), color=c, label=names[k])
        flick.plot(t, flicker(m, series)[0], color=c, label=names[k])
    warp.plot(t, _series(m.bicubic.ewarp), color=BASELINE, linestyle=":", label="bicubic (baseline)")
    flick.plot(t, flicker(m, m.source)[0], color=BASELINE, linestyle=":", label="source")
    for ax, title in ((fid, "Fidelity: PSNR-LR (dB), higher is closer to the source"),
                      (warp, "Temporal stability: E*warp (10^-3), lower is steadier"),
                      (flick, "Flicker: mean luma against its neighbours (8-bit values)")):
        _cuts(ax, m.starts)
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xlim(-0.5, max(0.5, m.frames - 0.5))
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(alpha=0.3)
    flick.set_xlabel("frame")
    scenes = scene_ranges(m)
    width = 0.8 / max(1, len(m.outputs))
    for k in range(len(m.outputs)):
        for c, (channel, tint) in enumerate((("R", "#d62728"), ("G", "#2ca02c"), ("B", "#1f77b4"))):
            shifts = [figures(m, k, a, b).colour_shift[c] for a, b in scenes]
            xs = [i + (k - (len(m.outputs) - 1) / 2) * width + (c - 1) * width / 3 for i in range(len(scenes))]
            colour.bar(xs, shifts, width / 3, color=tint, label=channel if k == 0 else None,
                       edgecolor=COLOURS[k % len(COLOURS)], linewidth=0.8)
    colour.axhline(0, color="#444444", linewidth=0.8)
    low, high = colour.get_ylim()
    colour.set_ylim(min(low, -1.0), max(high, 1.0))  # a shift of a fraction of a code value looks like one
    colour.set_xlim(-0.6, len(scenes) - 0.4)
    colour.set_xticks(range(len(scenes)), [f"{a}-{b - 1}" for a, b in scenes], fontsize=7)
    colour.set_title("Colour shift per scene: output mean - source mean (8-bit values)", fontsize=10, loc="left")
    colour.set_xlabel("scene (frames)")
    colour.legend(fontsize=7, loc="upper right")
    colour.grid(alpha=0.3, axis="y")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96)
    return buf.getvalue()


def _image_png(rgb) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def summary_png(report: Report) -> bytes:
    """One page: the clip's figures per output above the four plots."""
    fig, axes = _figure((0.35 + 0.12 * len(report.measurements.outputs), 1, 1, 1, 1), 2.4)
    header, rest = axes[0], axes[1:]
    header.axis("off")
    header.text(0, 1, f"vs-uav quality report: {report.job.source.name}\n{report.summary()}", va="top",
                fontsize=8, family="monospace", wrap=True)
    plot_measures(report, rest)
    return _png(fig)


# -- the page -----------------------------------------------------------------------------------------

_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f0f0f0}
td.l,th.l{text-align:left}.crops td{text-align:center;vertical-align:top}
.note{color:#555;font-size:13px}h2{margin-top:1.5em}img{max-width:100%}"""


def _cells(values: Sequence[str], tag: str = "td") -> str:
    return "".join(f"<{tag}>{v}</{tag}>" for v in values)


def _figures_row(label: str, f, ref: bool) -> str:
    cells = [_num(f.psnr, 2), _num(f.ssim, 4),
             *([_num(f.psnr_ref, 2), _num(f.ssim_ref, 4), _num(f.lpips_ref, 4)] if ref else []),
             _num(f.ewarp, 3), _num(f.ewarp_bicubic, 3), f"{_num(f.flicker, 3)} ({_num(f.flicker_source, 3)})",
             f"{_num(f.contrast_flicker, 3)} ({_num(f.contrast_flicker_source, 3)})",
             " / ".join(f"{v:+.2f}" if math.isfinite(v) else "" for v in f.colour_shift),
             " / ".join(f"{v:+.2f}" if math.isfinite(v) else "" for v in f.spread_shift)]
    return f"<tr><td class=l>{html.escape(label)}</td>{_cells(cells)}</tr>"


def _table_head(first: str, ref: bool) -> str:
    heads = [first, "PSNR-LR dB", "SSIM-LR", *(["PSNR dB (ref)", "SSIM (ref)", "LPIPS (ref)"] if ref else []), "E*warp",
             "E*warp bicubic", "flicker (source)", "contrast flicker (source)", "colour shift R / G / B",
             "spread shift R / G / B"]
    return "<tr>" + _cells(heads, "th") + "</tr>"


def _crops_html(report: Report, crops: Sequence[Crop], timecodes: Sequence[str]) -> str:
    m = report.measurements
    names = ["before (source, bicubic 4x)", *[Path(s.name).name for s in m.outputs]]
    if report.job.reference is not None:
        names.append("reference")
    rows = ["<tr>" + _cells([html.escape(n) for n in ["frame", *names]], "th") + "</tr>"]
    for c in crops:
        images = [c.before, *c.after, *([c.reference] if c.reference is not None else [])]
        left, top, w, h = c.box
        label = (f"{c.frame}<br>{timecodes[c.frame]}<br>{html.escape(c.why)}<br>"
                 f"<span class=note>{w}x{h} at ({left}, {top})</span>")
        cells = [label, *(f'<img alt="{html.escape(n)} at frame {c.frame}" src="{_data_uri(_image_png(i))}">'
                          for n, i in zip(names, images))]
        rows.append("<tr>" + _cells(cells) + "</tr>")
    return "<table class=crops>" + "".join(rows) + "</table>"


def page(report: Report) -> str:
    """The HTML report, self-contained."""
    from vs_uav.media.quality import figures, scene_ranges, worst_frames

    m, job = report.measurements, report.job
    ref = job.reference is not None
    timecodes = _timecodes(report)
    fig, axes = _figure((1, 1, 1, 1))
    plot_measures(report, axes)
    plots = _data_uri(_png(fig))
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>Quality report: "
             f"{html.escape(job.source.name)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>Quality report: {html.escape(job.source.name)}</h1>",
             "<p class=note>" + "<br>".join(html.escape(x) for x in (
                 f"source: {job.source} ({m.frames} frames at {float(m.fps):.3f} fps, {len(m.starts)} scene{'s' if len(m.starts) != 1 else ''})",
                 *(f"output {k + 1}: {s.name}" for k, s in enumerate(m.outputs)),
                 *([f"reference: {job.reference}"] if ref else []),
                 f"flow: {m.flow}; fidelity: each output frame downscaled to the source's size (bicubic, "
                 "antialiased) against the source frame", *m.notes, f"measured in {report.seconds:.1f} s")) + "</p>",
             "<h2>Whole clip</h2><table>" + _table_head("output", ref)]
    parts += [_figures_row(Path(s.name).name, figures(m, k), ref) for k, s in enumerate(m.outputs)]
    parts.append("</table>")
    parts.append(f'<h2>Over time</h2><img id=plots alt="plots of the measures over the frames" src="{plots}">')
    for k, series in enumerate(m.outputs):
        parts.append(f"<h2>Scenes of {html.escape(Path(series.name).name)}</h2><table>" + _table_head("frames", ref))
        parts += [_figures_row(f"{a}-{b - 1} ({timecodes[a]})", figures(m, k, a, b), ref) for a, b in scene_ranges(m)]
        worst = worst_frames(m, k)
        named = [("lowest fidelity", worst.fidelity), ("least stable", worst.stability), ("flicker", worst.flicker)]
        parts.append("</table><p>Worst frames: " + "; ".join(
            f"{what}: {', '.join(f'{t} ({timecodes[t]})' for t in frames) or 'none'}" for what, frames in named)
            + "</p>")
    if report.crops:
        parts.append("<h2>Before and after at the worst frames</h2>" + _crops_html(report, report.crops, timecodes))
    parts.append("<h2>The measures</h2><ul class=note>" + "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in _units().items()) + "</ul></body></html>")
    return "\n".join(parts)


def _units() -> dict[str, str]:
    from vs_uav.media.quality import UNITS

    return UNITS
