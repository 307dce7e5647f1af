"""Runs of the pipeline compared with each other (the statistics of `transferlab compare`): rows grouped by the
params that changed, runs that differ only in a seed pooled into one row, each row against a baseline by a
paired test where both saw the same test images, Holm-adjusted across the rows.

A run is one arm (probe or fine-tune) of one experiment: its params, the checksum of its test list and which
test images it got right. Pooled runs are paired with the baseline's seed by seed (the baseline's runs in
turn), and the pairs stacked: the difference is the mean gain over every (seed, image) pair, its interval
Newcombe's, and McNemar's exact test reads the discordant pairs of the stack.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from transferlab.evaluate import stats

SEED_KEYS = ("data.seed", "features.seed", "finetune.seed")  # params whose runs pool into one row
AFTER = ("visualize.", "sweep.", "export.", "evaluate.")  # params of stages after an arm's test predictions
UNSEEN = {"probe": (*AFTER, "finetune."), "finetune": AFTER}  # per arm: params its predictions do not depend on


@dataclass(frozen=True)
class Run:
    """One arm of one experiment: `params` by dotted key, `test_list` the checksum of its test split (paths
    and labels), `correct` one boolean per test image in the list's order, `val_accuracy` its validation score."""
    name: str
    params: dict[str, Any]
    test_list: str
    correct: np.ndarray
    val_accuracy: float


@dataclass(frozen=True)
class Row:
    """The runs of one setting (the changed params other than seeds), pooled over their seeds (or repeats)."""
    setting: dict[str, Any]
    runs: list[Run]
    accuracy: float
    low: float
    high: float
    val_accuracy: float

    @property
    def seeds(self) -> int:
        return len(self.runs)


def changed(runs: list[Run], unseen: tuple[str, ...] = ()) -> list[str]:
    """The dotted params whose values differ between the runs, in sorted order (dvc exp show --only-changed),
    but those starting with one of `unseen`."""
    keys = sorted({key for run in runs for key in run.params if not key.startswith(unseen)})
    return [key for key in keys if len({repr(run.params.get(key)) for run in runs}) > 1]


def pooled_interval(accuracies: list[float], images: int, confidence: float) -> tuple[float, float]:
    """The interval of a row's accuracy: Wilson's over its test images at the seeds' mean accuracy, widened for
    several seeds to Student's t over the seeds' accuracies where that is wider (the seeds share the test images,
    so pooling them never narrows the test set's own uncertainty)."""
    mean = float(np.mean(accuracies))
    low, high = stats.wilson(round(mean * images), images, confidence)
    if len(accuracies) == 1:
        return low, high
    from scipy.stats import t

    half = float(t.ppf(1 - (1 - confidence) / 2, len(accuracies) - 1) * np.std(accuracies, ddof=1)
                 / np.sqrt(len(accuracies)))
    return max(0.0, min(low, mean - half)), min(1.0, max(high, mean + half))


def rows(runs: list[Run], confidence: float, unseen: tuple[str, ...] = ()) -> list[Row]:
    """One row per setting: the runs whose changed params (but `unseen`) differ only in SEED_KEYS pool into one
    (a data.seed pools only runs on the same test list), in the order the settings first appear."""
    varying = [key for key in changed(runs, unseen) if key not in SEED_KEYS]
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        setting = tuple((key, run.params.get(key)) for key in varying)
        groups.setdefault((repr(setting), run.test_list), []).append(run)
    out = []
    for members in groups.values():
        accuracies = [float(np.mean(run.correct)) for run in members]
        low, high = pooled_interval(accuracies, len(members[0].correct), confidence)
        out.append(Row({key: members[0].params.get(key) for key in varying}, members, float(np.mean(accuracies)),
                       low, high, float(np.mean([run.val_accuracy for run in members]))))
    return out


def unpaired_reason(row: Row, baseline: Row) -> str | None:
    """Why a row cannot be compared image by image with the baseline (their test lists differ, and which params
    made them differ), None where it can."""
    if len({run.test_list for run in row.runs + baseline.runs}) == 1:
        return None
    data_keys = [key for key in changed(row.runs[:1] + baseline.runs[:1]) if key.startswith("data.")]
    return "another test list" + (f" ({', '.join(data_keys)} differs)" if data_keys else "")


def versus(row: Row, baseline: Row, confidence: float) -> dict[str, Any]:
    """The row's accuracy minus the baseline's on the same test images, seed by seed stacked: the difference,
    its interval, the discordant pairs and McNemar's exact p; unpaired (with the reason) where the lists differ."""
    reason = unpaired_reason(row, baseline)
    if reason:
        return {"paired": False, "reason": reason, "difference": round(row.accuracy - baseline.accuracy, 6)}
    ours = np.concatenate([run.correct for run in row.runs]).astype(bool)
    theirs = np.concatenate([baseline.runs[i % baseline.seeds].correct for i in range(row.seeds)]).astype(bool)
    low, high = stats.newcombe(theirs, ours, confidence)
    only_ours, only_theirs = int((ours & ~theirs).sum()), int((theirs & ~ours).sum())
    return {"paired": True, "difference": round(float(ours.mean() - theirs.mean()), 6), "low": round(low, 6),
            "high": round(high, 6), "only_row": only_ours, "only_baseline": only_theirs,
            "mcnemar_p": stats.mcnemar_exact(only_theirs, only_ours), "pairs": int(len(ours))}


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values (in their given order): the k-th smallest times (m − k + 1),
    never below an adjusted smaller one, at most 1."""
    order = np.argsort(p_values, kind="stable")
    adjusted = np.empty(len(p_values))
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return [float(p) for p in adjusted]


def chosen_by_validation(table: list[Row]) -> int:
    """The index of the row with the best mean validation accuracy (the first on a tie): the one to pick, never
    the best on test."""
    return int(np.argmax([row.val_accuracy for row in table]))


def against(table: list[Row], baseline: int, confidence: float) -> list[dict[str, Any]]:
    """Each row's record: its setting, seeds, accuracy and interval, validation accuracy, and (but the
    baseline's) the comparison with the baseline, its McNemar p Holm-adjusted over the paired rows; the row
    chosen by validation marked."""
    pairs = [None if i == baseline else versus(row, table[baseline], confidence) for i, row in enumerate(table)]
    tested = [i for i, pair in enumerate(pairs) if pair and pair["paired"]]
    for i, adjusted in zip(tested, holm([pairs[i]["mcnemar_p"] for i in tested])):
        pairs[i]["holm_p"] = adjusted
    chosen = chosen_by_validation(table)
    return [{"setting": row.setting, "seeds": row.seeds, "accuracy": row.accuracy, "low": row.low, "high": row.high,
             "val_accuracy": row.val_accuracy, "baseline": i == baseline, "chosen": i == chosen,
             "versus": pairs[i]} for i, row in enumerate(table)]


def markdown(records: list[dict[str, Any]]) -> str:
    """The records as a Markdown table: the changed params, seeds, test accuracy [interval], validation accuracy,
    the difference to the baseline [interval] and its Holm-adjusted p (✓ marks the row chosen by validation)."""
    keys = list(records[0]["setting"]) if records else []
    lines = ["| " + " | ".join([*keys, "runs", "test accuracy", "val accuracy", "vs baseline", "p (Holm)"]) + " |",
             "|" + "---|" * (len(keys) + 5)]
    for record in records:
        pair = record["versus"]
        if record["baseline"]:
            difference, p = "baseline", ""
        elif not pair["paired"]:
            difference, p = f"{pair['difference']:+.3f} unpaired: {pair['reason']}", ""
        else:
            difference, p = f"{pair['difference']:+.3f} [{pair['low']:+.3f}, {pair['high']:+.3f}]", f"{pair['holm_p']:.3g}"
        cells = [str(record["setting"][key]) for key in keys]
        cells += [str(record["seeds"]), f"{record['accuracy']:.3f} [{record['low']:.3f}, {record['high']:.3f}]",
                  f"{record['val_accuracy']:.3f}" + (" ✓" if record["chosen"] else ""), difference, p]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
