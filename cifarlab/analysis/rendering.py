"""A comparison as people and programs read it: rich tables with the verdicts on lines of their own, JSON, and a
picture a slide can use (each run as a dot with its group's interval, the differences with adjusted intervals,
per-class bars; matplotlib, cifarlab.report.figures)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

from cifarlab.analysis import stats
from cifarlab.analysis.comparison import Difference, GroupResult, Report
from cifarlab.analysis.metric import Metric
from cifarlab.analysis.planning import Plan
from cifarlab.report import console, figures

# --- output ---------------------------------------------------------------------------------------------

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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


def number(metric: Metric, value: Optional[float], sign: bool = False) -> str:
    """A figure in the metric's unit and digits ("61.20"); "-" for none."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value * metric.scale:{'+' if sign else ''},.{metric.digits}f}"


def _span(metric: Metric, ci: Optional[tuple[float, float]], sign: bool = False, runs: int = 0) -> str:
    """An interval; ``runs``: the fewest runs of its groups, which say why one is missing."""
    if ci is None:
        return "no spread" if runs >= 2 else "n<2"
    return f"[{number(metric, ci[0], sign)}, {number(metric, ci[1], sign)}]"


def _sides(d: Difference) -> int:
    return min(len(d.baseline.values), len(d.group.values))


def render(report: Report, per_class: bool, width: Optional[int], plan: Optional[Plan] = None) -> None:
    """The tables, then the verdicts (wrapped at spaces, never inside ``p = 0.684``). Where a table with the groups'
    labels would not fit the console (80 columns: a label of two overrides), every table names each group by its
    number instead (``#2``), and one line a group above them gives each number's whole label."""
    from rich.console import Console

    out = Console(highlight=False, markup=False, width=width)
    label: Label = _label
    tables = _tables(report, per_class, label)
    if not all(fits(out, table) for table in tables):
        out.print("groups by number:")
        for i, g in enumerate(report.groups, start=1):
            for line in console.wrapped(_label(report, g), out.width, f"  #{i} ", "      "):
                out.print(line)
        label = _number_label
        tables = _tables(report, per_class, label)
    for table in tables[:-1] if per_class else tables:
        out.print(table)
    if report.differences:
        out.print("verdicts:")
        for d in report.differences:
            for line in console.wrapped(d.verdict, out.width, "  ", "    "):
                out.print(line)
    if plan is not None:
        for line in plan_lines(report, plan):
            out.print(line)
    if per_class:
        for table in _class_tables(report, label, out):
            out.print(table)


def fits(out: Any, table: Any) -> bool:
    """Whether rich prints ``table`` on the console ``out`` whole: no cell cut with "…" or wrapped inside a name."""
    from rich.measure import Measurement

    return Measurement.get(out, out.options.update_width(10_000), table).maximum <= out.width


Label = Callable[[Report, GroupResult], str]


def _label(report: Report, g: GroupResult) -> str:
    return f"{g.group.label} (baseline)" if g is report.groups[report.baseline] else g.group.label


def _number_label(report: Report, g: GroupResult) -> str:
    """A group by its number (``#2``), for tables its label would not fit."""
    return f"#{next(i for i, other in enumerate(report.groups, start=1) if other is g)}"


def _tables(report: Report, per_class: bool, label: Label) -> list[Any]:
    """The group table, the spread table (where a group has a spread), the difference table (where there are
    differences) and with ``per_class`` the per-class table, last."""
    tables = [_group_table(report, label)]
    tables += [_spread_table(report, label)] if any(g.spread for g in report.groups) else []
    tables += [_difference_table(report, label)] if report.differences else []
    return tables + ([_class_table(report, label)] if per_class else [])


def _group_table(report: Report, label: Label) -> Any:
    from rich.table import Table

    metric = report.metric
    numbered = label is _number_label  # the group column holds the numbers then: no "#" column to repeat them
    table = Table(title=f"{metric.title} by group")
    if not numbered:
        table.add_column("#", justify="right")
    table.add_column("group", no_wrap=True)
    for name in ("n", "mean", "std", "95 % CI"):
        table.add_column(name, justify="right", no_wrap=True)
    for i, g in enumerate(report.groups, start=1):
        std = "n<2" if g.summary.std is None else number(metric, g.summary.std)
        table.add_row(*([] if numbered else [str(i)]), label(report, g), str(g.summary.n),
                      number(metric, g.summary.mean), std, _span(metric, g.summary.ci95, runs=g.summary.n))
    return table


def _spread_table(report: Report, label: Label) -> Any:
    from rich.table import Table

    metric = report.metric
    table = Table(title=f"run-to-run spread: {metric.sample} sampling alone vs seed luck (std)")
    for name in ("group", "std", metric.sample.replace("-", " "), "share", "seed luck"):
        table.add_column(name, justify="left" if name == "group" else "right", no_wrap=True)
    for g in report.groups:
        if g.spread is not None:
            table.add_row(label(report, g), number(metric, g.summary.std), number(metric, g.spread.test_set_std),
                          f"{100 * g.spread.explained:.0f} %", number(metric, g.spread.seed_std))
    return table


def _difference_table(report: Report, label: Label) -> Any:
    from rich import box
    from rich.table import Table

    metric, base = report.metric, report.groups[report.baseline]
    points = " (points)" if metric.unit == "%" else ""
    tests = {"welch": "Welch t", "mcnemar": "McNemar", None: "-"}
    # Numbered groups mean a narrow console: no borders, and one test for every row named in the title.
    numbered, used = label is _number_label, {_test(d) for d in report.differences}
    one_test = f"; {tests[used.pop()]}" if numbered and len(used) == 1 else ""
    table = Table(title=f"difference from {label(report, base).removesuffix(' (baseline)')}{points}{one_test}",
                  box=box.SIMPLE_HEAD if numbered else box.HEAVY_HEAD, pad_edge=not numbered)
    adjusted = "p" if report.adjust == "none" else f"p ({report.adjust})"
    # The adjusted interval differs from the plain one only when several comparisons are adjusted together.
    several = report.adjust != "none" and sum(d.p is not None for d in report.differences) > 1
    for name in ("group", "difference", "95 % CI (Welch)", *([] if one_test else ["test"]), "p", adjusted,
                 *([f"CI ({report.adjust})"] if several else [])):
        table.add_column(name, justify="left" if name in ("group", "test") else "right", no_wrap=True)
    for d in report.differences:
        cells = [label(report, d.group), number(metric, d.diff, sign=True),
                 _span(metric, d.welch.ci95 if d.welch else None, sign=True, runs=_sides(d)),
                 *([] if one_test else [tests[_test(d)]]),
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
    lines = [f"plan: to find a difference of {number(metric, plan.delta)}{unit} with {100 * stats.POWER:.0f} % power "
             f"(two-sided, {100 * plan.alpha:.3g} % level) at the pooled run-to-run spread "
             f"{number(metric, plan.std)}{unit}: {seeds} runs (seeds) per group"]
    for d, (label, smallest) in zip(report.differences, plan.detectable):
        missing = "no spread in the runs of either group" if _sides(d) >= 2 else "needs 2 or more runs in each group"
        found = missing if smallest is None else f"{number(metric, smallest)}{unit}"
        lines.append(f"  smallest difference the current runs find ({100 * stats.POWER:.0f} % power), {label}: {found}")
    return lines


def _class_tables(report: Report, label: Label, out: Any) -> list[Any]:
    """The per-class table in as few tables as fit the console ``out``: each the classes, the baseline and as many
    of the other groups as fit (nine groups take two tables at 80 columns); a cell is never cut."""
    base = report.groups[report.baseline]
    others = [g for g in report.groups if g is not base]
    tables = [_class_table(report, label)]
    for size in range(len(others), 0, -1):
        tables = [_class_table(report, label, others[i:i + size]) for i in range(0, len(others), size)]
        if all(fits(out, table) for table in tables):
            break
    return tables


def _class_table(report: Report, label: Label, others: Optional[list[GroupResult]] = None) -> Any:
    """The per-class table of the baseline and ``others`` (all groups where None), in the report's order."""
    from rich.table import Table

    base = report.groups[report.baseline]
    shown = [g for g in report.groups if g is base or others is None or any(g is o for o in others)]
    table = Table(title="final accuracy per class (%; change from the baseline in points)")
    table.add_column("class", no_wrap=True)
    for g in shown:
        table.add_column(label(report, g).removesuffix(" (baseline)"), justify="right", no_wrap=True)
    for name in base.per_class:
        cells = []
        for g in shown:
            value, ref = g.per_class.get(name), base.per_class.get(name)
            cell = "-" if value is None else f"{100 * value:.1f}"
            if g is not base and value is not None and ref is not None:
                cell += f" ({100 * (value - ref):+.1f})"
            cells.append(cell)
        table.add_row(name, *cells)
    return table


def picture(report: Report, per_class: bool) -> Figure:
    """Top: each run's value (a dot), each group's mean (black) and 95 % interval (blue bar), the baseline's mean a
    dashed line. Below: each group's difference from the baseline with its adjusted interval (the one that agrees
    with the verdict; green better, red worse, grey no verdict) around zero. With ``per_class``: each group's
    per-class difference from the baseline in points (bars around zero)."""
    classes = list(report.groups[report.baseline].per_class) if per_class and report.differences else []
    rows = [len(report.groups), len(report.differences), len(classes) * (1 + len(report.differences)) // 2]
    heights = [0.95 + 0.3 * count for count in rows if count]  # inches: title, axis and labels, and the rows
    heights[-1] += 0.5 if classes and len(report.differences) > 1 else 0.0  # the legend below
    longest = max(len(label) for label in [*(g.group.label + " (baseline)" for g in report.groups), *classes])
    # Inches: the row names (about 0.08 an inch a letter), a plot of 6, the values on its right: 1,300 pixels or more.
    chart = figures.figure(max(8.7, 0.08 * longest + 7.4), sum(heights), dpi=150)
    axes = chart.subplots(len(heights), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    _group_panel(axes[0], report)
    if report.differences:
        _difference_panel(axes[1], report)
    if classes:
        _class_bars(axes[2], report, classes)
    return chart


def _rows(ax: Any, title: str, labels: list[str]) -> None:
    """A panel of one row per label, the first on top."""
    figures.panel(ax, title)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.tick_params(axis="y", length=0)


def _right(ax: Any, row: int, text: str) -> None:
    """``text`` to the right of the plot, on ``row``."""
    ax.text(1.01, row, text, transform=ax.get_yaxis_transform(), va="center")


def _group_panel(ax: Any, report: Report) -> None:
    metric, base = report.metric, report.groups[report.baseline]
    scale = metric.scale
    _rows(ax, f"{metric.title} by group", [f"{g.group.label} (baseline)" if g is base else g.group.label
                                            for g in report.groups])
    if base.summary.mean is not None:
        ax.axvline(base.summary.mean * scale, color=figures.GREY, linestyle="--", linewidth=1)
    for i, g in enumerate(report.groups):
        if g.summary.ci95 is not None:
            ax.hlines(i, g.summary.ci95[0] * scale, g.summary.ci95[1] * scale, color=figures.BLUE, linewidth=5,
                      alpha=0.6)
        ax.scatter([v * scale for v in g.values], [i - 0.25] * len(g.values), s=20, color=figures.LIGHT,
                   edgecolors=figures.GREY, zorder=3)
        if g.summary.mean is not None:
            ax.scatter([g.summary.mean * scale], [i], s=45, color="black", zorder=4)
            _right(ax, i, f"{number(metric, g.summary.mean)} {metric.unit}".rstrip())
    ax.set_xlabel("dots: runs; black: the group's mean; blue bar: its 95 % interval")


def _difference_panel(ax: Any, report: Report) -> None:
    metric = report.metric
    adjusted = "" if report.adjust == "none" else f", {report.adjust}-adjusted"
    _rows(ax, f"difference from the baseline with its interval (Welch{adjusted})",
          [d.group.group.label for d in report.differences])
    ax.axvline(0.0, color=figures.GREY, linewidth=1.5)
    for i, d in enumerate(report.differences):
        colour = (figures.GREEN if " better than " in d.verdict else figures.RED if " worse than " in d.verdict
                  else figures.GREY)
        if d.ci_adjusted is not None:
            ax.hlines(i, d.ci_adjusted[0] * metric.scale, d.ci_adjusted[1] * metric.scale, color=colour,
                      linewidth=5, alpha=0.6)
        if d.diff is not None:
            ax.scatter([d.diff * metric.scale], [i], s=45, color=colour, zorder=4)
            _right(ax, i, number(metric, d.diff, sign=True))
    ax.set_xlabel(f"{'points' if metric.unit == '%' else metric.unit or metric.name}: green better, red worse, grey no "
                  f"verdict")


def _class_bars(ax: Any, report: Report, classes: list[str]) -> None:
    """Per-class difference from the baseline in points, one row per class: a bar per group (green right, red left;
    with several groups each its own colour, named in the legend)."""
    several = len(report.differences) > 1
    _rows(ax, "per-class final accuracy minus the baseline's (points)", classes)
    height = 0.8 / len(report.differences)
    largest = 0.0
    for k, d in enumerate(report.differences):
        values = [d.per_class.get(name) for name in classes]
        points = [0.0 if v is None else 100 * v for v in values]
        largest = max([largest, *map(abs, points)])
        colours = figures.SERIES[k % len(figures.SERIES)] if several else [
            figures.GREEN if v >= 0 else figures.RED for v in points]
        bars = ax.barh([i - 0.4 + (k + 0.5) * height for i in range(len(classes))], points, height=0.9 * height,
                       color=colours, label=d.group.group.label)
        ax.bar_label(bars, labels=["-" if v is None else f"{100 * v:+.1f}" for v in values], padding=3,
                     fontsize=8 if several else None)
    ax.axvline(0.0, color=figures.GREY, linewidth=1.5)
    ax.set_xlim(-1.25 * (largest or 1.0), 1.25 * (largest or 1.0))
    ax.set_xlabel("points")
    if several:
        # Below the axis and its label: beside the bars it would hide some.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), borderaxespad=3.0,
                  ncols=min(3, len(report.differences)), frameon=False)
