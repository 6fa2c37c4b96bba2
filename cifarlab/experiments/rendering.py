"""A comparison as people and programs read it: rich tables on the console, JSON, and a PNG of the means and
intervals (with per-class bars)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

from cifarlab.experiments import stats
from cifarlab.experiments.analysis import Difference, Metric, Paired, Report

# --- output ---------------------------------------------------------------------------------------------

if TYPE_CHECKING:
    from PIL import Image


def _interval(ci: Optional[tuple[float, float]]) -> Optional[list[float]]:
    return [ci[0], ci[1]] if ci is not None else None


def _paired_json(paired: Optional[Paired]) -> Optional[dict[str, Any]]:
    if isinstance(paired, stats.McNemar):
        return {"test": "mcnemar", "p": paired.p, "diff": paired.diff, "ci95": _interval(paired.ci95),
                "images": paired.images, "only_baseline_right": paired.only_a, "only_group_right": paired.only_b}
    if isinstance(paired, stats.Bootstrap):
        return {"test": "bootstrap", "p": paired.p, "diff": paired.diff, "ci95": _interval(paired.ci95),
                "images": paired.images, "resamples": paired.resamples, "seed": paired.seed}
    return None


def to_json(report: Report) -> dict[str, Any]:
    base = report.groups[report.baseline]
    return {
        "metric": report.metric.name,
        "higher_is_better": report.metric.higher_is_better,
        "grouped_by": report.keys,
        "baseline": base.group.label,
        "groups": [{"label": g.group.label, "overrides": g.group.overrides, "n": g.summary.n, "mean": g.summary.mean,
                    "std": g.summary.std, "ci95": _interval(g.summary.ci95), "values": g.values,
                    "runs": [str(run.path) for run in g.counted], "per_class": g.per_class} for g in report.groups],
        "differences": [{"group": d.group.group.label, "baseline": d.baseline.group.label, "diff": d.diff,
                         "ci95": _interval(d.welch.ci95) if d.welch else None,
                         "df": d.welch.df if d.welch else None, "p": d.welch.p if d.welch else None,
                         "paired": _paired_json(d.paired), "verdict": d.verdict, "per_class": d.per_class}
                        for d in report.differences],
        "missing": report.missing,
        "warnings": report.warnings,
        "notes": report.notes,
    }


def _number(metric: Metric, value: Optional[float], sign: bool = False) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value * metric.scale:{'+' if sign else ''},.{metric.digits}f}"


def _span(metric: Metric, ci: Optional[tuple[float, float]], sign: bool = False) -> str:
    return "n<2" if ci is None else f"[{_number(metric, ci[0], sign)}, {_number(metric, ci[1], sign)}]"


def render(report: Report, per_class: bool, width: Optional[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console(highlight=False, markup=False, width=width)
    metric, base = report.metric, report.groups[report.baseline]
    table = Table(title=f"{metric.title} by group")
    table.add_column("#", justify="right")
    table.add_column("group")
    for name in ("n", "mean", "std", "95 % CI"):
        table.add_column(name, justify="right")
    for i, g in enumerate(report.groups, start=1):
        label = f"{g.group.label} (baseline)" if g is base else g.group.label
        std = "n<2" if g.summary.std is None else _number(metric, g.summary.std)
        table.add_row(str(i), label, str(g.summary.n), _number(metric, g.summary.mean), std,
                      _span(metric, g.summary.ci95))
    out.print(table)
    if report.differences:
        points = " (points)" if metric.unit == "%" else ""
        table = Table(title=f"difference from {base.group.label}{points}")
        for name in ("group", "difference", "95 % CI (Welch)", "test", "paired 95 % CI", "p", "verdict"):
            table.add_column(name, justify="left" if name in ("group", "test", "verdict") else "right")
        for d in report.differences:
            test = ("McNemar" if isinstance(d.paired, stats.McNemar) else "paired bootstrap" if d.paired
                    else "Welch t" if d.welch else "-")
            p = d.paired.p if d.paired else d.welch.p if d.welch else None
            table.add_row(d.group.group.label, _number(metric, d.diff, sign=True),
                          _span(metric, d.welch.ci95 if d.welch else None, sign=True), test,
                          _span(metric, d.paired.ci95, sign=True) if d.paired else "-",
                          "-" if p is None else f"{p:.3g}", d.verdict)
        out.print(table)
    if per_class:
        out.print(_class_table(report))


def _class_table(report: Report) -> Any:
    from rich.table import Table

    table = Table(title="final accuracy per class (%; change from the baseline in points)")
    table.add_column("class")
    for g in report.groups:
        table.add_column(g.group.label, justify="right")
    base = report.groups[report.baseline]
    for name in base.per_class:
        cells = []
        for g in report.groups:
            value, ref = g.per_class.get(name), base.per_class.get(name)
            cell = "-" if value is None else f"{100 * value:.1f}"
            if g is not base and value is not None and ref is not None:
                cell += f" ({100 * (value - ref):+.1f})"
            cells.append(cell)
        table.add_row(name, *cells)
    return table


def picture(report: Report, per_class: bool) -> Image.Image:
    """Each group's mean (a dot) and 95 % interval (a bar), the baseline's mean as a grey line, and with
    ``per_class`` each group's per-class difference from the baseline (bars around zero). PIL only, like
    cifarlab/report/plots.py."""
    from PIL import Image, ImageDraw, ImageFont

    font, metric, base = ImageFont.load_default(), report.metric, report.groups[report.baseline]
    rows = [(g.group.label, g.summary.mean, g.summary.ci95) for g in report.groups]
    classes = list(base.per_class) if per_class and report.differences else []
    bar_labels = [_class_label(name, d) for name in classes for d in report.differences]
    left, plot, row = 12 + 6 * max(len(label) for label in [*(r[0] for r in rows), *bar_labels]), 420, 22
    axis = 30 + row * len(rows)
    top = axis + 40  # below the axis numbers: the per-class panel
    image = Image.new("RGB", (left + plot + 90, (top + 14 * len(bar_labels) + 6) if classes else axis + 20), _WHITE)
    draw = ImageDraw.Draw(image)
    draw.text((6, 4), f"{metric.title}: mean (dot) and 95 % interval (bar; none when n<2)", fill=_BLACK, font=font)
    ends = [v for _, centre, ci in rows for v in ((centre,) if ci is None else ci) if v is not None]
    low, high = (min(ends), max(ends)) if ends else (0.0, 1.0)
    pad = (high - low) * 0.1 or abs(high) * 0.05 or 1.0
    low, high = low - pad, high + pad

    def x(value: float) -> int:
        return int(left + (value - low) / (high - low) * plot)

    if base.summary.mean is not None:
        draw.line([x(base.summary.mean), 24, x(base.summary.mean), axis], fill=_GREY)
    for i, (label, centre, ci) in enumerate(rows):
        y = 30 + i * row + row // 2
        draw.text((6, y - 6), label, fill=_BLACK, font=font)
        if ci is not None:
            draw.line([x(ci[0]), y, x(ci[1]), y], fill=_BLUE, width=3)
            for end in ci:
                draw.line([x(end), y - 5, x(end), y + 5], fill=_BLUE, width=2)
        if centre is not None:
            draw.ellipse([x(centre) - 4, y - 4, x(centre) + 4, y + 4], fill=_BLACK)
            draw.text((left + plot + 8, y - 6), f"{_number(metric, centre)} {metric.unit}", fill=_BLACK, font=font)
    draw.line([left, axis, left + plot, axis], fill=_GREY)
    for value in (low, high):
        draw.text((x(value) - (40 if value == high else 0), axis + 3), _number(metric, value), fill=_GREY, font=font)
    if classes:
        _class_bars(draw, font, report, classes, top, left, plot)
    return image


_WHITE, _BLACK, _GREY, _BLUE = (255, 255, 255), (0, 0, 0), (120, 120, 120), (40, 90, 200)
_GREEN, _RED = (20, 140, 40), (220, 30, 30)


def _class_label(name: str, d: Difference) -> str:
    return f"{name} ({d.group.group.label})"


def _class_bars(draw: Any, font: Any, report: Report, classes: list[str], top: int, left: int, plot: int) -> None:
    """Per-class difference from the baseline in points: one bar per (class, group), green up, red down,
    scaled to the largest difference."""
    base = report.groups[report.baseline].group.label
    draw.text((6, top - 16), f"per-class final accuracy minus {base} (points)", fill=_BLACK, font=font)
    diffs = [d.per_class.get(name) for d in report.differences for name in classes]
    largest = max((abs(v) for v in diffs if v is not None), default=0.0) or 0.01
    zero, y = left + plot // 2, top
    draw.line([zero, top, zero, top + 14 * len(classes) * len(report.differences)], fill=_GREY)
    for name in classes:
        for d in report.differences:
            value = d.per_class.get(name)
            draw.text((6, y), _class_label(name, d), fill=_BLACK, font=font)
            if value is not None:
                end = zero + int(value / largest * (plot // 2 - 4))
                draw.rectangle([min(zero, end), y + 2, max(zero, end), y + 11], fill=_GREEN if value >= 0 else _RED)
                draw.text((left + plot + 8, y), f"{100 * value:+.1f}", fill=_BLACK, font=font)
            y += 14
