"""A comparison as people and programs read it: rich tables with the verdicts on lines of their own, JSON, and a
PNG a slide can use (each run as a dot with its group's interval, the differences with adjusted intervals, per-class
bars)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

from cifarlab.analysis import stats
from cifarlab.analysis.comparison import Difference, GroupResult, Metric, Report
from cifarlab.analysis.planning import Plan

# --- output ---------------------------------------------------------------------------------------------

if TYPE_CHECKING:
    from PIL import Image


def _interval(ci: Optional[tuple[float, float]]) -> Optional[list[float]]:
    return [ci[0], ci[1]] if ci is not None else None


def _paired_json(paired: Optional[stats.McNemar]) -> Optional[dict[str, Any]]:
    if paired is None:
        return None
    return {"test": "mcnemar", "p": paired.p, "diff": paired.diff, "ci95": _interval(paired.ci95),
            "images": paired.images, "only_baseline_right": paired.only_a, "only_group_right": paired.only_b}


def _spread_json(g: GroupResult) -> Optional[dict[str, Any]]:
    s = g.spread
    return None if s is None else {"images": s.images, "test_set_std": s.test_set_std, "seed_std": s.seed_std,
                                   "test_set_share": s.explained}


def _plan_json(plan: Optional[Plan]) -> Optional[dict[str, Any]]:
    if plan is None:
        return None
    return {"delta": plan.delta, "power": stats.POWER, "alpha": plan.alpha, "pooled_std": plan.std,
            "seeds_per_group": plan.seeds, "detectable": {label: value for label, value in plan.detectable}}


def _test(d: Difference) -> Optional[str]:
    return "welch" if d.welch else "mcnemar" if d.paired else None


def to_json(report: Report, plan: Optional[Plan] = None) -> dict[str, Any]:
    base = report.groups[report.baseline]
    return {
        "metric": report.metric.name,
        "higher_is_better": report.metric.higher_is_better,
        "grouped_by": report.keys,
        "baseline": base.group.label,
        "adjust": report.adjust,
        "groups": [{"label": g.group.label, "overrides": g.group.overrides, "n": g.summary.n, "mean": g.summary.mean,
                    "std": g.summary.std, "floor": g.floor, "ci95": _interval(g.summary.ci95), "values": g.values,
                    "spread": _spread_json(g), "runs": [str(run.path) for run in g.counted],
                    "per_class": g.per_class} for g in report.groups],
        "differences": [{"group": d.group.group.label, "baseline": d.baseline.group.label, "diff": d.diff,
                         "ci95": _interval(d.welch.ci95) if d.welch else None,
                         "df": d.welch.df if d.welch else None, "test": _test(d), "p": d.p,
                         "p_adjusted": d.p_adjusted, "ci95_adjusted": _interval(d.ci_adjusted),
                         "paired": _paired_json(d.paired), "verdict": d.verdict, "per_class": d.per_class}
                        for d in report.differences],
        "plan": _plan_json(plan),
        "missing": report.missing,
        "merged": [{"run": str(m.run), "kept": str(m.kept), "reason": m.reason} for m in report.merged],
        "warnings": report.warnings,
        "notes": report.notes,
    }


def _number(metric: Metric, value: Optional[float], sign: bool = False) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value * metric.scale:{'+' if sign else ''},.{metric.digits}f}"


def _span(metric: Metric, ci: Optional[tuple[float, float]], sign: bool = False, runs: int = 0) -> str:
    """An interval; ``runs``: the fewest runs of its groups, which say why one is missing."""
    if ci is None:
        return "no spread" if runs >= 2 else "n<2"
    return f"[{_number(metric, ci[0], sign)}, {_number(metric, ci[1], sign)}]"


def _sides(d: Difference) -> int:
    return min(len(d.baseline.values), len(d.group.values))


def render(report: Report, per_class: bool, width: Optional[int], plan: Optional[Plan] = None) -> None:
    from rich.console import Console

    out = Console(highlight=False, markup=False, width=width)
    out.print(_group_table(report))
    if any(g.spread for g in report.groups):
        out.print(_spread_table(report))
    if report.differences:
        out.print(_difference_table(report))
        out.print("verdicts:")
        for d in report.differences:
            out.print(f"  {d.verdict}")
    if plan is not None:
        for line in plan_lines(report, plan):
            out.print(line)
    if per_class:
        out.print(_class_table(report))


def _group_table(report: Report) -> Any:
    from rich.table import Table

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
                      _span(metric, g.summary.ci95, runs=g.summary.n))
    return table


def _spread_table(report: Report) -> Any:
    from rich.table import Table

    metric = report.metric
    table = Table(title="run-to-run spread: test-set sampling alone vs seed luck (std)")
    for name in ("group", "std", "test set", "share", "seed luck"):
        table.add_column(name, justify="left" if name == "group" else "right")
    for g in report.groups:
        if g.spread is not None:
            table.add_row(g.group.label, _number(metric, g.summary.std), _number(metric, g.spread.test_set_std),
                          f"{100 * g.spread.explained:.0f} %", _number(metric, g.spread.seed_std))
    return table


def _difference_table(report: Report) -> Any:
    from rich.table import Table

    metric, base = report.metric, report.groups[report.baseline]
    points = " (points)" if metric.unit == "%" else ""
    table = Table(title=f"difference from {base.group.label}{points}")
    adjusted = "p" if report.adjust == "none" else f"p ({report.adjust})"
    # The adjusted interval differs from the plain one only when several comparisons are adjusted together.
    several = report.adjust != "none" and sum(d.p is not None for d in report.differences) > 1
    for name in ("group", "difference", "95 % CI (Welch)", "test", "p", adjusted,
                 *([f"CI ({report.adjust})"] if several else [])):
        table.add_column(name, justify="left" if name in ("group", "test") else "right")
    for d in report.differences:
        cells = [d.group.group.label, _number(metric, d.diff, sign=True),
                 _span(metric, d.welch.ci95 if d.welch else None, sign=True, runs=_sides(d)),
                 {"welch": "Welch t", "mcnemar": "McNemar", None: "-"}[_test(d)],
                 "-" if d.p is None else f"{d.p:.3g}", "-" if d.p_adjusted is None else f"{d.p_adjusted:.3g}"]
        if several:
            cells.append("none: p on the threshold" if d.ci_withheld
                         else _span(metric, d.ci_adjusted, sign=True) if d.ci_adjusted else "-")
        table.add_row(*cells)
    return table


def plan_lines(report: Report, plan: Plan) -> list[str]:
    metric = report.metric
    unit = " points" if metric.unit == "%" else f" {metric.unit}" if metric.unit else ""
    seeds = "more than 10,000" if plan.seeds is None else str(plan.seeds)
    lines = [f"plan: to find a difference of {_number(metric, plan.delta)}{unit} with {100 * stats.POWER:.0f} % power "
             f"(two-sided, {100 * plan.alpha:.3g} % level) at the pooled run-to-run spread "
             f"{_number(metric, plan.std)}{unit}: {seeds} runs (seeds) per group"]
    for d, (label, smallest) in zip(report.differences, plan.detectable):
        missing = "no spread in the runs of either group" if _sides(d) >= 2 else "needs 2 or more runs in each group"
        found = missing if smallest is None else f"{_number(metric, smallest)}{unit}"
        lines.append(f"  smallest difference the current runs find ({100 * stats.POWER:.0f} % power), {label}: {found}")
    return lines


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


_WHITE, _BLACK, _GREY, _BLUE = (255, 255, 255), (0, 0, 0), (120, 120, 120), (40, 90, 200)
_GREEN, _RED, _LIGHT = (20, 140, 40), (220, 30, 30), (150, 170, 220)
_TEXT, _ROW, _PLOT = 22, 40, 900
"""Font size, row height and plot width in pixels: readable on a slide (the image is about 1,600 wide)."""


def _font(size: int) -> Any:
    """A scalable font at ``size`` pixels: DejaVu Sans where installed, else Pillow's own (scalable from
    Pillow 10.1), else its small bitmap font."""
    from PIL import ImageFont

    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        try:
            return ImageFont.load_default(size=size)
        except TypeError:
            return ImageFont.load_default()


class _Axis:
    """Maps values to x pixels over [low, high] padded by a tenth."""

    def __init__(self, values: list[float], left: int, include_zero: bool = False) -> None:
        ends = values + ([0.0] if include_zero else [])
        low, high = (min(ends), max(ends)) if ends else (0.0, 1.0)
        pad = (high - low) * 0.1 or abs(high) * 0.05 or 1.0
        self.low, self.high, self.left = low - pad, high + pad, left

    def __call__(self, value: float) -> int:
        return int(self.left + (value - self.low) / (self.high - self.low) * _PLOT)


def picture(report: Report, per_class: bool) -> Image.Image:
    """Top: each run's value (a grey dot), each group's mean (black) and 95 % interval (blue bar). Below: each
    group's difference from the baseline with its adjusted interval (the one that agrees with the verdict; green
    better, red worse, grey no verdict) around a zero line. With ``per_class``: each group's per-class difference
    from the baseline (bars around zero). PIL only, like cifarlab/report/plots.py."""
    from PIL import Image, ImageDraw

    font = _font(_TEXT)
    classes = list(report.groups[report.baseline].per_class) if per_class and report.differences else []
    labels = [g.group.label for g in report.groups] + [_class_label(c, d) for c in classes for d in report.differences]
    left = 24 + int(max(font.getlength(label) for label in labels))
    groups_h = 50 + _ROW * len(report.groups) + 40
    diffs_h = (60 + _ROW * len(report.differences) + 40) if report.differences else 0
    classes_h = (60 + 30 * len(classes) * len(report.differences)) if classes else 0
    image = Image.new("RGB", (left + _PLOT + 200, groups_h + diffs_h + classes_h), _WHITE)
    draw = ImageDraw.Draw(image)
    _group_panel(draw, font, report, left, 0)
    if report.differences:
        _difference_panel(draw, font, report, left, groups_h)
    if classes:
        _class_bars(draw, font, report, classes, groups_h + diffs_h + 40, left, _PLOT)
    return image


def _group_panel(draw: Any, font: Any, report: Report, left: int, top: int) -> None:
    metric, base = report.metric, report.groups[report.baseline]
    draw.text((12, top + 8), f"{metric.title}: runs (grey), mean (black), 95 % interval (blue)", fill=_BLACK,
              font=font)
    x = _Axis([v for g in report.groups for v in [*g.values, *(g.summary.ci95 or ())]], left)
    bottom = top + 50 + _ROW * len(report.groups)
    if base.summary.mean is not None:
        draw.line([x(base.summary.mean), top + 44, x(base.summary.mean), bottom], fill=_GREY, width=2)
    for i, g in enumerate(report.groups):
        y = top + 50 + i * _ROW + _ROW // 2
        draw.text((12, y - _TEXT // 2 - 2), g.group.label, fill=_BLACK, font=font)
        if g.summary.ci95 is not None:
            draw.line([x(g.summary.ci95[0]), y, x(g.summary.ci95[1]), y], fill=_BLUE, width=5)
        for value in g.values:
            draw.ellipse([x(value) - 5, y - 12, x(value) + 5, y - 2], fill=_LIGHT, outline=_GREY)
        if g.summary.mean is not None:
            draw.ellipse([x(g.summary.mean) - 7, y - 7, x(g.summary.mean) + 7, y + 7], fill=_BLACK)
            draw.text((left + _PLOT + 16, y - _TEXT // 2 - 2), f"{_number(metric, g.summary.mean)} {metric.unit}",
                      fill=_BLACK, font=font)
    _ticks(draw, font, metric, x, bottom)


def _ticks(draw: Any, font: Any, metric: Metric, x: _Axis, y: int, sign: bool = False) -> None:
    draw.line([x.left, y, x.left + _PLOT, y], fill=_GREY, width=2)
    for value in (x.low, x.high):
        text = _number(metric, value, sign)
        draw.text((x(value) - (int(font.getlength(text)) if value == x.high else 0), y + 4), text, fill=_GREY,
                  font=font)


def _difference_panel(draw: Any, font: Any, report: Report, left: int, top: int) -> None:
    metric, base = report.metric, report.groups[report.baseline]
    adjusted = "" if report.adjust == "none" else f", {report.adjust}-adjusted"
    draw.text((12, top + 8), f"difference from {base.group.label} with its interval (Welch{adjusted})",
              fill=_BLACK, font=font)
    ends = [v for d in report.differences for v in [*((d.diff,) if d.diff is not None else ()),
                                                     *(d.ci_adjusted or ())]]
    x = _Axis(ends, left, include_zero=True)
    bottom = top + 50 + _ROW * len(report.differences)
    draw.line([x(0.0), top + 44, x(0.0), bottom], fill=_GREY, width=2)
    for i, d in enumerate(report.differences):
        y = top + 50 + i * _ROW + _ROW // 2
        colour = (_GREEN if " better than " in d.verdict else _RED if " worse than " in d.verdict else _GREY)
        draw.text((12, y - _TEXT // 2 - 2), d.group.group.label, fill=_BLACK, font=font)
        if d.ci_adjusted is not None:
            draw.line([x(d.ci_adjusted[0]), y, x(d.ci_adjusted[1]), y], fill=colour, width=5)
        if d.diff is not None:
            draw.ellipse([x(d.diff) - 7, y - 7, x(d.diff) + 7, y + 7], fill=colour)
            draw.text((left + _PLOT + 16, y - _TEXT // 2 - 2), _number(metric, d.diff, sign=True), fill=_BLACK,
                      font=font)
    _ticks(draw, font, metric, x, bottom, sign=True)


def _class_label(name: str, d: Difference) -> str:
    return f"{name} ({d.group.group.label})"


def _class_bars(draw: Any, font: Any, report: Report, classes: list[str], top: int, left: int, plot: int) -> None:
    """Per-class difference from the baseline in points: one bar per (class, group), green up, red down,
    scaled to the largest difference."""
    base = report.groups[report.baseline].group.label
    draw.text((12, top - 36), f"per-class final accuracy minus {base} (points)", fill=_BLACK, font=font)
    diffs = [d.per_class.get(name) for d in report.differences for name in classes]
    largest = max((abs(v) for v in diffs if v is not None), default=0.0) or 0.01
    zero, y = left + plot // 2, top
    draw.line([zero, top, zero, top + 30 * len(classes) * len(report.differences)], fill=_GREY, width=2)
    for name in classes:
        for d in report.differences:
            value = d.per_class.get(name)
            draw.text((12, y), _class_label(name, d), fill=_BLACK, font=font)
            if value is not None:
                end = zero + int(value / largest * (plot // 2 - 4))
                draw.rectangle([min(zero, end), y + 4, max(zero, end), y + 24], fill=_GREEN if value >= 0 else _RED)
                draw.text((left + plot + 16, y), f"{100 * value:+.1f}", fill=_BLACK, font=font)
            y += 30
