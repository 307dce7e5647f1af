"""What `transferlab compare` writes: each arm's rows as a Markdown table (120 columns), CSV or JSON, and an HTML
page in the report's style with one figure (the metric against the changed params: intervals as bars, each run
as a point) opening with one sentence per arm."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import textwrap
from pathlib import Path
from typing import Any

from transferlab.core.atomic import atomic_path
from transferlab.core.errors import UserError
from transferlab.core.project import METHOD_NAMES, METRIC_NAMES
from transferlab.evaluate.compare import Arm, label, opening

TEMPLATE = Path("workflow/report/compare.html.j2")
WIDTH = 120  # the console's columns the Markdown output fits


def _versus_cells(record: dict[str, Any]) -> tuple[str, str]:
    pair = record["versus"]
    if record["baseline"]:
        return "baseline", ""
    if not pair["paired"]:
        return f"{pair['difference']:+.3f} unpaired: {pair['reason']}", ""
    return f"{pair['difference']:+.3f} [{pair['low']:+.3f}, {pair['high']:+.3f}]", f"{pair['holm_p']:.3g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows]) + "\n"


def heading(arm: Arm) -> str:
    """The line above an arm's table: the arm, its baseline and how it was picked, the intervals' level."""
    if arm.rule == "validation":
        return f"{arm.arm} (baseline {arm.baseline}: the row best on validation, ✓; {arm.confidence:.0%} intervals)"
    return f"{arm.arm} (baseline {arm.baseline}; ✓ best on validation; {arm.confidence:.0%} intervals)"


def arm_markdown(arm: Arm) -> str:
    """An arm's rows: the changed params, runs, the test metric [interval], validation accuracy, the difference to
    the baseline [interval] and its Holm-adjusted p; an arm with one setting in every run as one line."""
    if len(arm.records) == 1:
        record = arm.records[0]
        return (f"{arm.arm}: one setting in every run ({record['seeds']} runs pooled: {METRIC_NAMES[arm.metric]} "
                f"{record['value']:.3f} [{record['low']:.3f}, {record['high']:.3f}])\n")
    rows = []
    for record in arm.records:
        rows.append([*(str(record["setting"][key]) for key in arm.keys), str(record["seeds"]),
                     f"{record['value']:.3f} [{record['low']:.3f}, {record['high']:.3f}]",
                     f"{record['val_accuracy']:.3f}" + (" ✓" if record["chosen"] else ""), *_versus_cells(record)])
    header = [*arm.keys, "runs", f"test {METRIC_NAMES[arm.metric]}", "val accuracy", "vs baseline", "p (Holm)"]
    return f"{heading(arm)}\n\n{textwrap.fill(opening(arm), WIDTH)}\n\n{_table(header, rows)}"


def side_by_side_markdown(verdicts: list[dict[str, Any]]) -> str:
    """Each run's two arms: their test accuracies and the fine-tune's against the probe's on the same images."""
    rows = [[verdict["name"], verdict["setting"], f"{verdict['probe']:.3f}", f"{verdict['finetune']:.3f}",
             f"{verdict['difference']:+.3f} [{verdict['low']:+.3f}, {verdict['high']:+.3f}]",
             f"{verdict['mcnemar_p']:.3g}"] for verdict in verdicts]
    return ("both arms per run (the report's verdict: fine-tuned − frozen on the same test images, McNemar's p)\n\n"
            + _table(["run", "setting", "probe", "fine-tune", "fine-tune − probe", "p"], rows))


def markdown(arms: list[Arm], verdicts: list[dict[str, Any]]) -> str:
    return "\n".join([*(arm_markdown(arm) for arm in arms), *([side_by_side_markdown(verdicts)] if verdicts else [])])


def as_json(arms: list[Arm], verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything the tables show, as one record."""
    return {"metric": arms[0].metric, "confidence": arms[0].confidence,
            "arms": {arm.arm: {"baseline": arm.baseline, "baseline_rule": arm.rule, "changed": arm.keys,
                               "opening": opening(arm) if len(arm.records) > 1 else None, "rows": arm.records}
                     for arm in arms},
            "side_by_side": verdicts}


def from_json(record: dict[str, Any]) -> tuple[list[Arm], list[dict[str, Any]]]:
    """The arms and the side-by-side rows back from `as_json`'s record."""
    arms = [Arm(name, arm["baseline"], arm["baseline_rule"], record["metric"], record["confidence"], arm["rows"])
            for name, arm in record["arms"].items()]
    return arms, record["side_by_side"]


def as_csv(arms: list[Arm]) -> str:
    """One line per arm and row: the changed params (the union over the arms), the row's figures, and its
    comparison with its arm's baseline."""
    keys = list(dict.fromkeys(key for arm in arms for key in arm.keys))
    metric = arms[0].metric
    columns = ["arm", *keys, "runs", metric, "low", "high", "val_accuracy", "chosen", "baseline", "difference",
               "difference_low", "difference_high", "test", "p", "holm_p", "unpaired"]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for arm in arms:
        for record in arm.records:
            pair = record["versus"] or {}
            writer.writerow({"arm": arm.arm, **record["setting"], "runs": record["seeds"],
                             metric: record["value"], **{key: record[key] for key in ("low", "high", "val_accuracy",
                                                                                     "chosen", "baseline")},
                             "difference": pair.get("difference"), "difference_low": pair.get("low"),
                             "difference_high": pair.get("high"), "test": pair.get("test"), "p": pair.get("p"),
                             "holm_p": pair.get("holm_p"), "unpaired": pair.get("reason")})
    return out.getvalue()


def _order(arm: Arm) -> list[dict[str, Any]]:
    """The arm's rows by their setting's values where those compare (numbers), else as the table lists them."""
    try:
        return sorted(arm.records, key=lambda record: tuple(float(record["setting"][key]) for key in arm.keys))
    except (TypeError, ValueError):
        return arm.records


def _tick(record: dict[str, Any]) -> str:
    pair = record["versus"]
    notes = [*(["baseline"] if record["baseline"] else []), *(["unpaired"] if pair and not pair["paired"] else []),
             *(["✓ validation"] if record["chosen"] else [])]
    return "\n".join([label(record["setting"]), *notes])


def figure(arms: list[Arm]) -> str:
    """One panel per arm with more than one setting: the test metric against the setting, each row's interval as a
    bar, each run as a point, the baseline and the row chosen by validation marked."""
    from transferlab.reporting.figures import plt, png

    shown = [arm for arm in arms if len(arm.records) > 1]
    fig, axes = plt.subplots(1, len(shown), figsize=(6.5 * len(shown), 4.2), squeeze=False, layout="constrained")
    for ax, arm in zip(axes[0], shown):
        records = _order(arm)
        for x, record in enumerate(records):
            colour = "C3" if record["chosen"] else "black" if record["baseline"] else "C0"
            ax.errorbar(x, record["value"], [[max(0.0, record["value"] - record["low"])],
                                             [max(0.0, record["high"] - record["value"])]],
                        fmt="_", ms=18, capsize=6, lw=2, color=colour)
            runs = record["runs"]
            offsets = [0.0] if len(runs) == 1 else [0.12 * (i / (len(runs) - 1) - 0.5) for i in range(len(runs))]
            ax.plot([x + offset for offset in offsets], [run["value"] for run in runs], "o", ms=5, alpha=0.7,
                    color=colour)
        ax.set_xticks(range(len(records)), [_tick(record) for record in records], fontsize=8,
                      rotation=20 if len(records) > 4 else 0)
        ax.set(ylabel=f"test {METRIC_NAMES[arm.metric]}", title=f"{METHOD_NAMES[arm.arm]}: {', '.join(arm.keys)}")
        ax.grid(axis="y", alpha=0.3)
    return png(fig, None)


def html(arms: list[Arm], verdicts: list[dict[str, Any]], sources: dict[str, str], project: Path, out: Path) -> Path:
    """The page (the project's workflow/report/compare.html.j2, its figure embedded), written whole or not at all;
    `sources`: each compared run and the changed params it was made with."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    template = project / TEMPLATE
    if not template.is_file():
        raise UserError(f"{template}: no such template (the page's; give --project the transferlab project)")
    env = Environment(loader=FileSystemLoader(template.parent), autoescape=select_autoescape(["html", "j2"]))
    page = env.get_template(template.name).render(
        arms=arms, verdicts=verdicts, sources=sources, names=METHOD_NAMES, opening=opening, heading=heading,
        metric=METRIC_NAMES[arms[0].metric],
        figure=figure(arms) if any(len(arm.records) > 1 for arm in arms) else None,
        confidence=arms[0].confidence, date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))
    with atomic_path(out) as tmp:
        tmp.write_text(page)
    return out


def written(arms: list[Arm], verdicts: list[dict[str, Any]], form: str) -> str:
    """The comparison as `form`: md, csv or json."""
    if form == "json":
        return json.dumps(as_json(arms, verdicts), indent=1) + "\n"
    return as_csv(arms) if form == "csv" else markdown(arms, verdicts)
