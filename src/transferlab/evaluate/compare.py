"""Runs of the pipeline compared with each other (the statistics of `transferlab compare`): rows grouped by the
params that changed, runs that differ only in a seed pooled into one row, each row against a baseline by a
paired test where both saw the same test images, Holm-adjusted across the rows.

A run is one arm (probe or fine-tune) of one experiment: its params, the checksum of its test list and its
test predictions. Pooled runs are paired with the baseline's seed by seed (the one with fewer seeds taking its
seeds in turn), and the pairs stacked. For accuracy the difference is the mean gain over every (seed, image)
pair, its interval Newcombe's, and McNemar's exact test reads the discordant pairs of the stack; balanced
accuracy and macro F1, which are no per-image mean, get a paired bootstrap interval and a permutation test.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from transferlab.core.errors import UserError
from transferlab.core.project import METHOD_NAMES, METHODS, METRIC_NAMES
from transferlab.evaluate import stats
from transferlab.settings.sections import Evaluate

log = logging.getLogger("transferlab")

SEED_KEYS = ("data.seed", "features.seed", "finetune.seed")  # params whose runs pool into one row
AFTER = ("visualize.", "sweep.", "export.", "evaluate.")  # params of stages after an arm's test predictions
BEST = "best"  # the baseline picked per arm: its row best on validation
UNSEEN = {"probe": (*AFTER, "finetune."), "finetune": AFTER}  # per arm: params its predictions do not depend on


@dataclass(frozen=True)
class Run:
    """One arm of one experiment: `params` by dotted key, `test_list` the checksum of its test split (paths
    and labels), `actual` and `predicted` the label of each test image in the list's order, `val_accuracy` its
    validation score."""
    name: str
    params: dict[str, Any]
    test_list: str
    actual: np.ndarray
    predicted: np.ndarray
    val_accuracy: float

    @property
    def correct(self) -> np.ndarray:
        return self.actual == self.predicted


@dataclass(frozen=True)
class Row:
    """The runs of one setting (the changed params other than seeds), pooled over their seeds (or repeats):
    each run's metric, their mean and its interval."""
    setting: dict[str, Any]
    runs: list[Run]
    values: list[float]
    low: float
    high: float
    val_accuracy: float

    @property
    def seeds(self) -> int:
        return len(self.runs)

    @property
    def value(self) -> float:
        return float(np.mean(self.values))


def changed(runs: list[Run], unseen: tuple[str, ...] = ()) -> list[str]:
    """The dotted params whose values differ between the runs, in sorted order (dvc exp show --only-changed),
    but those starting with one of `unseen`."""
    keys = sorted({key for run in runs for key in run.params if not key.startswith(unseen)})
    return [key for key in keys if len({repr(run.params.get(key)) for run in runs}) > 1]


def encoded(*labels: np.ndarray) -> tuple[list[np.ndarray], int]:
    """Label arrays as integers over the classes they hold together, and how many classes that is."""
    classes, inverse = np.unique(np.concatenate(labels).astype(str), return_inverse=True)
    return np.split(inverse, np.cumsum([len(array) for array in labels])[:-1]), len(classes)


def score(run: Run, metric: str) -> float:
    (actual, predicted), classes = encoded(run.actual, run.predicted)
    return float(stats.scores(actual, predicted, metric, classes)[0])


def run_interval(run: Run, metric: str, settings: Evaluate) -> tuple[float, float]:
    """A run's interval: Wilson's for accuracy (as the report), else a percentile bootstrap over its test images
    (`settings.draws`, seeded by `settings.seed`), the resampling its paired comparisons use."""
    if metric == "accuracy":
        return stats.wilson(int(run.correct.sum()), len(run.correct), settings.confidence)
    (actual, predicted), classes = encoded(run.actual, run.predicted)
    interval = stats.bootstrap(actual, predicted, metric, classes, settings)
    return interval["low"], interval["high"]


def pooled_interval(values: list[float], intervals: list[tuple[float, float]], confidence: float) -> tuple[float, float]:
    """The interval of a row's mean over its runs: the runs' own intervals' mean reach below and above their
    value, around the mean, widened for several seeds to Student's t over the seeds' values where that is wider
    (the seeds share the test images, so pooling them never narrows the test set's own uncertainty)."""
    if len(values) == 1:
        return intervals[0]
    from scipy.stats import t

    mean = float(np.mean(values))
    low = mean - float(np.mean([value - bottom for value, (bottom, _) in zip(values, intervals)]))
    high = mean + float(np.mean([top - value for value, (_, top) in zip(values, intervals)]))
    half = float(t.ppf(1 - (1 - confidence) / 2, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
    return max(0.0, min(low, mean - half, mean)), min(1.0, max(high, mean + half, mean))


def rows(runs: list[Run], metric: str, settings: Evaluate, unseen: tuple[str, ...] = ()) -> list[Row]:
    """One row per setting: the runs whose changed params (but `unseen`) differ only in SEED_KEYS pool into one,
    in the order the settings first appear; where the test lists differ, data.seed is a column (its runs pool
    only on the same test list)."""
    lists = len({run.test_list for run in runs}) > 1  # a data param that changed the test list is a column
    varying = [key for key in changed(runs, unseen) if key not in SEED_KEYS or (lists and key.startswith("data."))]
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        setting = tuple((key, run.params.get(key)) for key in varying)
        groups.setdefault((repr(setting), run.test_list), []).append(run)
    out = []
    for members in groups.values():
        values = [score(run, metric) for run in members]
        low, high = pooled_interval(values, [run_interval(run, metric, settings) for run in members],
                                    settings.confidence)
        out.append(Row({key: members[0].params.get(key) for key in varying}, members, values, low, high,
                       float(np.mean([run.val_accuracy for run in members]))))
    return out


def unpaired_reason(row: Row, baseline: Row) -> str | None:
    """Why a row cannot be compared image by image with the baseline (their test lists differ, and which params
    made them differ), None where it can."""
    if len({run.test_list for run in row.runs + baseline.runs}) == 1:
        return None
    data_keys = [key for key in changed(row.runs[:1] + baseline.runs[:1]) if key.startswith("data.")]
    return "another test list" + (f" ({', '.join(data_keys)} differs)" if data_keys else "")


def versus(row: Row, baseline: Row, metric: str, settings: Evaluate) -> dict[str, Any]:
    """The row's metric minus the baseline's on the same test images, seed by seed stacked (the one with fewer
    seeds taking its seeds in turn): the difference, its interval and p (accuracy: Newcombe's and McNemar's
    exact, with the discordant pairs; else stats.paired_resampled); unpaired (with the reason) where the test
    lists differ."""
    reason = unpaired_reason(row, baseline)
    if reason:
        return {"paired": False, "reason": reason, "difference": round(row.value - baseline.value, 6)}
    pairs = range(max(row.seeds, baseline.seeds))
    ours, theirs = ([runs[i % len(runs)] for i in pairs] for runs in (row.runs, baseline.runs))
    images = len(ours[0].actual) * len(ours)
    if metric != "accuracy":
        (actual, *predicted), classes = encoded(ours[0].actual, *(run.predicted for run in theirs + ours))
        return {"paired": True, **stats.paired_resampled(actual, predicted[:len(theirs)], predicted[len(theirs):],
                                                         metric, classes, settings),
                "test": "permutation", "pairs": images}
    pair = stats.paired_accuracy(*(np.concatenate([run.correct for run in side]) for side in (theirs, ours)),
                                 settings.confidence)
    return {"paired": True, **{key: round(pair[key], 6) for key in ("difference", "low", "high")},
            "only_row": pair["only_b"], "only_baseline": pair["only_a"], "p": pair["p"], "test": "McNemar's exact",
            "pairs": images}


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


def against(table: list[Row], baseline: int, metric: str, settings: Evaluate) -> list[dict[str, Any]]:
    """Each row's record: its setting, its runs (name, metric, validation accuracy), the metric and its interval,
    validation accuracy, and (but the baseline's) the comparison with the baseline, its p Holm-adjusted over the
    paired rows; the row chosen by validation marked."""
    pairs = [None if i == baseline else versus(row, table[baseline], metric, settings) for i, row in enumerate(table)]
    tested = [i for i, pair in enumerate(pairs) if pair and pair["paired"]]
    for i, adjusted in zip(tested, holm([pairs[i]["p"] for i in tested])):
        pairs[i]["holm_p"] = adjusted
    chosen = chosen_by_validation(table)
    return [{"setting": row.setting, "seeds": row.seeds,
             "runs": [{"name": run.name, "value": round(value, 6), "val_accuracy": run.val_accuracy}
                      for run, value in zip(row.runs, row.values)],
             "value": round(row.value, 6), "low": round(row.low, 6), "high": round(row.high, 6),
             "val_accuracy": round(row.val_accuracy, 6), "baseline": i == baseline, "chosen": i == chosen,
             "versus": pairs[i]} for i, row in enumerate(table)]


@dataclass(frozen=True)
class Arm:
    """One arm's comparison in `metric`: its rows' records (`against`), the baseline (a run's name, or the
    setting of the row best on validation) and how it was picked (`named` or `validation`), at `confidence`."""
    arm: str
    baseline: str
    rule: str
    metric: str
    confidence: float
    records: list[dict[str, Any]]

    @property
    def keys(self) -> list[str]:
        return list(self.records[0]["setting"])


def compared(arm: str, runs: list[Run], baseline: Run | None, metric: str, settings: Evaluate) -> Arm:
    """The arm's rows against the row holding the `baseline` run, or (None) the row best on validation."""
    table = rows(runs, metric, settings, UNSEEN[arm])
    if baseline is None:
        first, rule = chosen_by_validation(table), "validation"
    else:
        first, rule = next(i for i, row in enumerate(table) if any(run is baseline for run in row.runs)), "named"
    return Arm(arm, label(table[first].setting) if baseline is None else baseline.name, rule, metric,
               settings.confidence, against(table, first, metric, settings))


def label(setting: dict[str, Any]) -> str:
    """A row's setting as text: `finetune.lr=1e-05, finetune.unfreeze=2`."""
    return ", ".join(f"{key}={value}" for key, value in setting.items()) or "—"


def clear_lead(pair: dict[str, Any] | None, confidence: float) -> bool:
    """True where a paired difference is more than its uncertainty: its interval clear of 0 and its Holm p
    below 1 − confidence."""
    return bool(pair and pair["paired"] and (pair["low"] > 0 or pair["high"] < 0)
                and pair["holm_p"] < 1 - confidence)


def opening(arm: Arm) -> str:
    """One sentence: the setting best on validation, and whether its test lead over the baseline is more than
    the uncertainty."""
    chosen = next(record for record in arm.records if record["chosen"])
    runs = f"{chosen['seeds']} runs" if chosen["seeds"] > 1 else "1 run"
    said = (f"{METHOD_NAMES[arm.arm]}: {label(chosen['setting'])} is best on validation ({chosen['val_accuracy']:.3f}, "
            f"{runs})")
    pair = chosen["versus"]
    if chosen["baseline"]:
        beaten = [record for record in arm.records if clear_lead(record["versus"], arm.confidence)
                  and record["versus"]["difference"] > 0]
        return said + (f" and is the baseline; {label(beaten[0]['setting'])} leads it on test by more than the "
                       f"uncertainty, a lead validation did not pick." if beaten else
                       " and is the baseline; no other setting leads it on test by more than the uncertainty.")
    if not pair["paired"]:
        return (said + f"; its test {METRIC_NAMES[arm.metric]} differs from the baseline's by "
                       f"{pair['difference']:+.3f}, unpaired ({pair['reason']}).")
    verdict = "more than" if clear_lead(pair, arm.confidence) else "within"
    return (said + f"; its test {METRIC_NAMES[arm.metric]} is {pair['difference']:+.3f} [{pair['low']:+.3f}, "
            f"{pair['high']:+.3f}] against the baseline ({arm.baseline}), Holm p {pair['holm_p']:.3g}: {verdict} the "
            f"uncertainty.")


def changed_params(found: dict[str, dict[str, Run]]) -> dict[str, dict[str, Any]]:
    """{source: the params it changed}: the params (but those of stages after the test predictions) whose values
    differ between the sources, seeds included."""
    first = {name: next(iter(arms.values())) for name, arms in found.items()}
    keys = changed(list(first.values()), AFTER)
    return {name: {key: run.params.get(key) for key in keys} for name, run in first.items()}


def side_by_side(found: dict[str, dict[str, Run]], confidence: float) -> list[dict[str, Any]]:
    """Per source holding both arms on one test list, the verdict's two arms: its changed params, each arm's
    accuracy, and the fine-tune's against the probe's on the same images (stats.paired, as the report)."""
    setting = changed_params(found)
    out = []
    for name, arms in found.items():
        if len(arms) < 2 or arms["probe"].test_list != arms["finetune"].test_list:
            continue
        pair = stats.paired({"probe": arms["probe"].correct, "finetune": arms["finetune"].correct}, confidence)
        out.append({"name": name, "setting": label(setting[name]),
                    "probe": round(float(np.mean(arms["probe"].correct)), 6),
                    "finetune": round(float(np.mean(arms["finetune"].correct)), 6), **pair})
    return out


def evaluate_settings(params: dict[str, Any]) -> Evaluate:
    """A run's evaluate section back from its dotted params."""
    return Evaluate(**{key.split(".", 1)[1]: value for key, value in params.items() if key.startswith("evaluate.")})


def comparisons(found: dict[str, dict[str, Run]], baseline: str | None,
                metric: str = "accuracy") -> tuple[list[Arm], list[dict[str, Any]]]:
    """Each arm run by two or more sources compared within itself in `metric` against the `baseline` source's
    run (None, or a source without that arm: the arm's row best on validation), and each source's two arms side
    by side; at the first source's evaluate params (confidence, draws, seed)."""
    settings = evaluate_settings(next(iter(next(iter(found.values())).values())).params)
    arms = []
    for arm in METHODS:
        runs = [held[arm] for held in found.values() if arm in held]
        if len(runs) < 2:
            continue
        if baseline is not None and arm not in found[baseline]:
            log.warning("%s: %s has no %s run; that arm's baseline is its row best on validation", arm, baseline, arm)
        arms.append(compared(arm, runs, found[baseline].get(arm) if baseline is not None else None, metric, settings))
    if not arms:
        raise UserError("no arm was run by two of these runs: nothing to compare")
    return arms, side_by_side(found, settings.confidence)
