"""The statistics of comparing runs, on constructed predictions: grouping, seed pooling, pairing, Holm."""
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from transferlab.evaluate import compare, stats
from transferlab.settings.sections import Evaluate

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = Evaluate(draws=2000, confidence=0.95, seed=0, tta=False)


def correct(right: int, of: int = 40, shift: int = 0) -> np.ndarray:
    """`right` of `of` images right, the run of right answers starting at image `shift`."""
    out = np.zeros(of, bool)
    out[(np.arange(right) + shift) % of] = True
    return out


def run(lr: float, seed: int, right: np.ndarray, val: float = 0.5, data_seed: int = 42, test_list: str = "a"):
    return compare.Run(f"lr {lr} seed {seed}", {"finetune.lr": lr, "finetune.seed": seed, "data.seed": data_seed,
                                               "head.max_iter": 2000}, test_list, np.zeros(len(right), int),
                       np.where(right, 0, 1), val)


def test_runs_that_differ_only_in_seeds_pool_into_one_row_per_setting():
    runs = [run(1e-5, 0, correct(30)), run(1e-5, 1, correct(32)), run(1e-4, 0, correct(20)),
            run(1e-4, 1, correct(24))]
    assert compare.changed(runs) == ["finetune.lr", "finetune.seed"]
    table = compare.rows(runs, "accuracy", SETTINGS)
    assert [(row.setting, row.seeds) for row in table] == [({"finetune.lr": 1e-5}, 2), ({"finetune.lr": 1e-4}, 2)]
    assert table[0].value == pytest.approx(0.775) and table[1].value == pytest.approx(0.55)


def test_a_pooled_interval_is_student_s_over_the_seeds_never_narrower_than_the_runs_own():
    own = [stats.wilson(right, 40, 0.95) for right in (32, 34, 36)]  # each run's Wilson interval
    low, high = compare.pooled_interval([0.8, 0.85, 0.9], own, 0.95)
    half = 4.302653 * 0.05 / np.sqrt(3)  # t(0.975, 2 degrees of freedom) × the standard error of the seeds' mean
    reach = (np.mean([0.8 - own[0][0], 0.85 - own[1][0], 0.9 - own[2][0]]),
             np.mean([own[0][1] - 0.8, own[1][1] - 0.85, own[2][1] - 0.9]))  # the runs' own reach, around the mean
    assert (low, high) == pytest.approx((min(0.85 - reach[0], 0.85 - half), max(0.85 + reach[1], 0.85 + half)))
    assert 0.85 - reach[0] < 0.85 - half and high == pytest.approx(0.85 + half)  # each bound from the wider one
    same = [stats.wilson(20, 40, 0.95)] * 3
    assert compare.pooled_interval([0.5, 0.5, 0.5], same, 0.95) == pytest.approx(same[0])  # seeds that agree
    assert compare.pooled_interval([0.75], [(0.5981, 0.8581)], 0.95) == (0.5981, 0.8581)  # one run: its own


def test_a_run_s_interval_is_wilson_s_for_accuracy_and_a_seeded_bootstrap_for_the_others():
    run_ = compare.Run("r", {}, "a", np.array(list("aabbbccd") * 4), np.array(list("abbbcccd") * 4), 0.5)
    assert compare.run_interval(run_, "accuracy", SETTINGS) == pytest.approx(stats.wilson(24, 32, 0.95))
    low, high = compare.run_interval(run_, "macro_f1", SETTINGS)
    assert low < compare.score(run_, "macro_f1") < high and (low, high) == compare.run_interval(
        run_, "macro_f1", SETTINGS)  # around the run's own score, the same each time (evaluate.seed)
    index = np.random.default_rng(SETTINGS.seed).integers(0, 32, (SETTINGS.draws, 32))[0]  # the first resample
    (actual, predicted), classes = compare.encoded(run_.actual, run_.predicted)
    first = stats.scores(actual[index], predicted[index], "macro_f1", classes)[0]
    assert first == pytest.approx(f1_score(run_.actual[index], run_.predicted[index], average="macro"))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # the case tested
def test_the_scores_are_scikit_learn_s_for_every_draw():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    rng = np.random.default_rng(0)
    actual = rng.integers(0, 5, 60)
    actual[actual == 4] = 3  # a class no image holds, but predictions may name
    predicted = np.where(rng.random((7, 60)) < 0.6, actual, rng.integers(0, 5, (7, 60)))
    for metric, reference in (("accuracy", accuracy_score), ("balanced_accuracy", balanced_accuracy_score),
                              ("macro_f1", lambda a, p: f1_score(a, p, average="macro"))):
        assert stats.scores(actual, predicted, metric, 5) == pytest.approx([reference(actual, p) for p in predicted])


def test_balanced_accuracy_and_macro_f1_are_paired_by_bootstrap_and_permutation():
    actual = np.repeat([0, 1, 2], 30)
    base = np.where(np.arange(90) % 3 == 0, (actual + 1) % 3, actual)  # a third wrong in every class
    better = np.where(np.arange(90) % 15 == 0, (actual + 1) % 3, actual)
    same = stats.paired_resampled(actual, [base], [base], "macro_f1", 3, SETTINGS)
    assert same["difference"] == 0 and same["p"] == 1 and same["low"] == same["high"] == 0
    gain = stats.paired_resampled(actual, [base], [better], "balanced_accuracy", 3, SETTINGS)
    assert gain["difference"] == pytest.approx(28 / 30 - 20 / 30, abs=1e-6)  # recall 20 of 30 per class, then 28 of 30
    assert 0 < gain["low"] < gain["difference"] < gain["high"] and gain["p"] < 0.001
    again = stats.paired_resampled(actual, [base], [better], "balanced_accuracy", 3, SETTINGS)
    assert again == gain  # seeded by evaluate.seed


def test_a_row_against_the_baseline_is_paired_image_by_image_with_mcnemar_s_exact_p():
    base = correct(20)
    better = base.copy()
    better[[0, 1]] = False      # 2 images only the baseline gets right
    better[20:30] = True        # 10 only the row gets right
    baseline, row = (compare.rows([run(lr, 0, right)], "accuracy", SETTINGS)[0] for lr, right in ((1e-5, base), (1e-4, better)))
    pair = compare.versus(row, baseline, "accuracy", SETTINGS)
    assert pair["paired"] and (pair["only_row"], pair["only_baseline"], pair["pairs"]) == (10, 2, 40)
    assert pair["difference"] == pytest.approx(0.2)
    assert pair["p"] == pytest.approx(2 * (1 + 12 + 66) / 2**12)  # two-sided binomial, 2 of 12 discordant
    assert pair["low"] < 0.2 < pair["high"]


def test_seeds_are_paired_with_the_baseline_s_seeds_in_turn_and_stacked():
    baseline = compare.rows([run(1e-5, 0, correct(20)), run(1e-5, 1, correct(20, shift=5))], "accuracy", SETTINGS)[0]
    row = compare.rows([run(1e-4, 0, correct(25)), run(1e-4, 1, correct(25, shift=5))], "accuracy", SETTINGS)[0]
    pair = compare.versus(row, baseline, "accuracy", SETTINGS)
    assert (pair["only_row"], pair["only_baseline"], pair["pairs"]) == (10, 0, 80)


def test_another_test_list_is_shown_unpaired_with_the_param_that_made_it():
    baseline = compare.rows([run(1e-5, 0, correct(20))], "accuracy", SETTINGS)[0]
    other = compare.rows([run(1e-5, 0, correct(25), data_seed=7, test_list="b")], "accuracy", SETTINGS)[0]
    pair = compare.versus(other, baseline, "accuracy", SETTINGS)
    assert not pair["paired"] and pair["reason"] == "another test list (data.seed differs)"
    assert pair["difference"] == pytest.approx(0.125)


def test_a_data_seed_pools_only_runs_on_the_same_test_list():
    runs = [run(1e-5, 0, correct(20)), run(1e-5, 0, correct(22), data_seed=7, test_list="b")]
    assert [row.seeds for row in compare.rows(runs, "accuracy", SETTINGS)] == [1, 1]


def test_holm_adjusts_in_step_down_order_and_never_decreases():
    assert compare.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert compare.holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert compare.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_the_row_chosen_is_the_best_on_validation_not_on_test():
    table = compare.rows([run(1e-5, 0, correct(35), val=0.6), run(1e-4, 0, correct(25), val=0.7)], "accuracy", SETTINGS)
    assert compare.chosen_by_validation(table) == 1 and table[0].value > table[1].value


def write_run(folder, changes: dict, right: dict[str, int], val: dict[str, float], labels=("0", "007", "NA"),
              images: str = "img") -> None:
    """A run's folder as the pipeline leaves it: params.yaml, and per arm its metrics and test predictions (40
    images; `right[arm]` of them right; class names pandas would misread unless read as text)."""
    import json

    import pandas as pd
    import yaml

    from transferlab.pipeline import layout
    from transferlab.settings.params import defaults

    settings = defaults()
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        settings[section][key] = value
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(settings))
    actual = [labels[i % 3] for i in range(40)]
    for arm, count in right.items():
        files = layout.files(f"evaluate_{arm}", folder)
        files.predictions.parent.mkdir(parents=True, exist_ok=True)
        files.metrics.parent.mkdir(parents=True, exist_ok=True)
        predicted = [a if i < count else labels[(i + 1) % 3] for i, a in enumerate(actual)]
        pd.DataFrame({"id": [f"{images}{i:02d}.jpg" for i in range(40)], "actual": actual, "predicted": predicted}).to_csv(
            files.predictions, index=False)
        files.metrics.write_text(json.dumps({"accuracy": count / 40, "val_accuracy": val[arm]}))


def test_compare_prints_one_table_per_arm_with_pooled_seeds_and_holm_adjusted_p(tmp_path, capsys, monkeypatch):
    from transferlab.serve import cli

    monkeypatch.chdir(tmp_path)  # the runs named as a user names folders beside them
    write_run(tmp_path / "base", {"finetune.lr": 1e-5}, {"probe": 20, "finetune": 20}, {"probe": 0.5, "finetune": 0.5})
    for seed, right in ((0, 32), (1, 34)):
        write_run(tmp_path / f"fast{seed}", {"finetune.lr": 1e-4, "finetune.seed": seed},
                  {"probe": 20, "finetune": right}, {"probe": 0.5, "finetune": 0.8})
    write_run(tmp_path / "other", {"finetune.lr": "3e-05", "data.seed": 7}, {"finetune": 30}, {"finetune": 0.6},
              images="other")  # another split: other test images
    assert cli.main(["compare", "base", "fast0", "fast1", "other"]) == 0
    out = capsys.readouterr().out
    finetune = out[out.index("finetune (baseline"):]
    lines = [line for line in finetune.splitlines() if line.startswith("| ")]
    # finetune.seed is no column: its runs pool into one row; data.seed is one, where it changed the test list
    assert lines[0] == "| data.seed | finetune.lr | runs | test accuracy | val accuracy | vs baseline | p (Holm) |"
    assert lines[1].startswith("| 42 | 1e-05 | 1 | 0.500 [") and "baseline" in lines[1]
    assert lines[2].startswith("| 42 | 0.0001 | 2 | 0.825 [") and "0.800 ✓" in lines[2]
    # the seeds stacked: 12 + 14 images only the row gets right, none only the baseline; one paired row to adjust
    assert "+0.325 [" in lines[2] and lines[2].endswith(f"| {2 * 0.5 ** 26:.3g} |")
    assert lines[3].startswith("| 7 | 3e-05 | 1 | 0.750 [")  # written as dvc exp run -S writes it: a number
    assert "+0.250 unpaired: another test list (data.seed differs)" in lines[3]
    assert lines[4].startswith("| run | setting | probe | fine-tune |") and len(lines) == 8  # both arms per run
    assert lines[5] == ("| base | data.seed=42, finetune.lr=1e-05, finetune.seed=0 | 0.500 | 0.500 | "
                        "+0.000 [+0.000, +0.000] | 1 |")
    assert "other" not in "".join(lines[5:])  # a run of one arm has no verdict
    assert "probe: one setting in every run (3 runs pooled: accuracy 0.500 [0.352, 0.648])" in out  # lr is no probe param
    assert max(len(line) for line in out.splitlines()) <= 120
    opening = ("Fine-tuned: data.seed=42, finetune.lr=0.0001 is best on validation (0.800, 2 runs); its test accuracy "
               "is +0.325 [+0.218, +0.422] against the baseline (base), Holm p 2.98e-08: more than the uncertainty.")
    assert opening in " ".join(out.split())  # wrapped to the 120 columns


def test_compare_against_the_best_on_validation_and_in_each_format(tmp_path, capsys):
    import csv
    import io
    import json

    from sklearn.metrics import balanced_accuracy_score

    from transferlab.serve import cli

    runs = write_grid(tmp_path)
    assert cli.main(["compare", *runs, "--baseline", "best", "--json"]) == 0
    finetune = json.loads(capsys.readouterr().out)["arms"]["finetune"]
    assert (finetune["baseline"], finetune["baseline_rule"], finetune["changed"]) == (
        "finetune.lr=0.0001", "validation", ["finetune.lr"])
    base, best = finetune["rows"]
    assert best["baseline"] and best["chosen"] and best["versus"] is None and best["seeds"] == 2
    assert [run["value"] for run in best["runs"]] == [0.8, 0.85]
    assert base["versus"]["difference"] == pytest.approx(-0.325) and base["versus"]["holm_p"] < 1e-7
    assert finetune["opening"].endswith("and is the baseline; no other setting leads it on test by more than the "
                                        "uncertainty.")
    assert cli.main(["compare", *runs, "--csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(row["arm"], row["finetune.lr"], row["runs"], row["baseline"]) for row in table] == [
        ("probe", "", "3", "True"), ("finetune", "1e-05", "1", "True"), ("finetune", "0.0001", "2", "False")]
    assert float(table[2]["difference"]) == pytest.approx(0.325) and table[2]["chosen"] == "True"
    with pytest.raises(SystemExit):
        cli.main(["compare", *runs, "--csv", "--json"])
    assert cli.main(["compare", *runs, "--metric", "balanced_accuracy", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    base, best = shown["arms"]["finetune"]["rows"]
    labels = [("0", "007", "NA")[i % 3] for i in range(40)]  # write_run's: the first `right` images right
    predicted = [label if i < 20 else ("0", "007", "NA")[(i + 1) % 3] for i, label in enumerate(labels)]
    assert shown["metric"] == "balanced_accuracy" and base["value"] == pytest.approx(
        balanced_accuracy_score(labels, predicted), abs=1e-6)
    assert best["versus"]["test"] == "permutation" and best["versus"]["p"] < 0.01


def test_compare_writes_a_page_with_the_figure_and_its_opening_sentence(tmp_path, capsys):
    from transferlab.serve import cli

    runs = write_grid(tmp_path)
    page = tmp_path / "out" / "compare.html"
    page.parent.mkdir()
    assert cli.main(["compare", *runs, "--html", str(page), "--project", str(ROOT)]) == 0
    html = page.read_text()
    assert '<p class="verdict" data-arm="finetune">Fine-tuned: finetune.lr=0.0001 is best on validation' in html
    assert 'id="figure" src="data:image/png;base64,' in html and 'id="finetune-table"' in html
    assert html.count('<p class="verdict"') == 1  # the probe: one setting, no sentence
    assert "One setting in every run: 3 runs pooled" in html and 'id="side-by-side-table"' in html
    assert cli.main(["compare", *runs, "--html", str(tmp_path / "elsewhere.html"), "--project", str(tmp_path)]) == 2
    assert "compare.html.j2: no such template" in capsys.readouterr().err and not (tmp_path / "elsewhere.html").exists()


def write_grid(folder) -> list[str]:
    """Three runs: a baseline, and one rate two seeds at once better on validation and on test."""
    write_run(folder / "base", {"finetune.lr": 1e-5}, {"probe": 20, "finetune": 20}, {"probe": 0.5, "finetune": 0.5})
    for seed, right in ((0, 32), (1, 34)):
        write_run(folder / f"fast{seed}", {"finetune.lr": 1e-4, "finetune.seed": seed},
                  {"probe": 20, "finetune": right}, {"probe": 0.5, "finetune": 0.8})
    return [str(folder / name) for name in ("base", "fast0", "fast1")]


def test_the_opening_says_whether_the_lead_of_the_setting_picked_on_validation_is_more_than_the_uncertainty():
    close = compare.compared("finetune", [run(1e-5, 0, correct(20)), run(1e-4, 0, correct(22), val=0.9)],
                             None, "accuracy", SETTINGS)
    assert compare.opening(close) == ("Fine-tuned: finetune.lr=0.0001 is best on validation (0.900, 1 run) and "
                                      "is the baseline; no other setting leads it on test by more than the uncertainty.")
    baseline = run(1e-5, 0, correct(20))
    picked = compare.compared("finetune", [baseline, run(1e-4, 0, correct(22), val=0.9)], baseline, "accuracy", SETTINGS)
    assert compare.opening(picked).endswith("its test accuracy is +0.050 [-0.016, +0.114] against the baseline "
                                            "(lr 1e-05 seed 0), Holm p 0.5: within the uncertainty.")
    missed = compare.compared("finetune", [baseline, run(1e-4, 0, correct(36)), run(3e-5, 0, correct(21), val=0.9)],
                              None, "accuracy", SETTINGS)
    assert "finetune.lr=0.0001 leads it on test by more than the uncertainty, a lead validation did not pick" in (
        compare.opening(missed))


def test_compare_needs_two_folders_with_their_runs(tmp_path, capsys):
    from transferlab.pipeline import layout
    from transferlab.serve import cli

    write_run(tmp_path / "base", {}, {"probe": 20}, {"probe": 0.5})
    assert cli.main(["compare", str(tmp_path / "base")]) == 2
    assert cli.main(["compare", str(tmp_path / "base"), str(tmp_path / "missing"), "--project", str(tmp_path)]) == 2
    write_run(tmp_path / "pulled", {}, {"probe": 20}, {"probe": 0.5})
    (tmp_path / "pulled" / layout.files("evaluate_probe", ".").predictions).unlink()  # its metrics, not its predictions
    assert cli.main(["compare", str(tmp_path / "base"), str(tmp_path / "pulled")]) == 2
    assert capsys.readouterr().err.endswith("results/eval/probe/predictions.csv is missing; dvc pull, or re-run the "
                                            "evaluate_probe stage\n")


def dvc_project(folder, monkeypatch, states: dict[str, str]):
    """A project folder that looks like a DVC project, whose `dvc exp show` lists experiments in `states`."""
    from transferlab.pipeline import experiments

    for marker in (".dvc", ".git"):
        (folder / marker).mkdir(parents=True)
    listed = [{"rev": "workspace"}, *({"Experiment": name, "rev": name[:7], "State": state}
                                      for name, state in states.items())]
    monkeypatch.setattr(experiments, "_experiment_rows", lambda project, everything: listed)


def test_compare_leaves_out_unfinished_experiments_and_refuses_them_by_name(tmp_path, monkeypatch, capsys, caplog):
    from transferlab.pipeline import experiments
    from transferlab.serve import cli

    dvc_project(tmp_path, monkeypatch, {"done-exp": "Success", "slow-exp": "Running", "bad-exp": "Failed",
                                        "next-exp": "Queued"})
    assert experiments.experiments(tmp_path) == ["done-exp"]
    assert {record.getMessage() for record in caplog.records} >= {"slow-exp: running, left out",
                                                                   "bad-exp: failed, left out", "next-exp: queued, left out"}
    for name, state in (("slow-exp", "running"), ("bad-exp", "failed"), ("next-exp", "queued")):
        assert cli.main(["compare", "workspace", name, "--project", str(tmp_path)]) == 2
        assert capsys.readouterr().err == (f"transferlab compare: error: {name}: {state}; compare it once it has run "
                                           "(dvc queue status)\n")


def test_compare_with_no_experiments_says_so(tmp_path, monkeypatch, capsys):
    from transferlab.serve import cli

    write_run(tmp_path, {}, {"probe": 20}, {"probe": 0.5})
    dvc_project(tmp_path, monkeypatch, {"bad-exp": "Failed"})
    assert cli.main(["compare", "--project", str(tmp_path)]) == 2
    assert capsys.readouterr().err.endswith("transferlab compare: error: workspace: one run is nothing to compare; "
                                            "name two or more, or run experiments (dvc exp run -S ...)\n")


def test_a_lock_s_stages_not_made_from_the_params_and_inputs_as_they_are_are_stale():
    from transferlab.pipeline.experiments import stale_stages

    lock = {"stages": {
        "split": {"params": {"params.yaml": {"data.seed": 7}}, "outs": [{"path": "data/splits", "md5": "new"}]},
        "evaluate_probe": {"deps": [{"path": "data/splits", "md5": "new"}], "outs": [{"path": "probe", "md5": "p"}]},
        "finetune": {"params": {"params.yaml": {"finetune": {"lr": "1e-05"}}},  # as DVC writes it: a string
                     "deps": [{"path": "data/splits", "md5": "old"}], "outs": [{"path": "model", "md5": "m"}]},
        "evaluate_finetune": {"deps": [{"path": "model", "md5": "m"}, {"path": "probe", "md5": "p"}]}}}
    assert stale_stages(lock, {"data.seed": 7, "finetune.lr": 1e-05}) == {  # `dvc exp run … evaluate_probe`
        "finetune": "data/splits is newer", "evaluate_finetune": "finetune is stale"}
    assert stale_stages(lock, {"data.seed": 8, "finetune.lr": 1e-05}) == {
        "split": "data.seed changed", "finetune": "data/splits is newer", "evaluate_probe": "split is stale",
        "evaluate_finetune": "finetune is stale"}
    lock["stages"]["finetune"]["deps"][0]["md5"] = "new"
    assert stale_stages(lock, {"data.seed": 7, "finetune.lr": 1e-05}) == {}
    assert stale_stages(lock, {"data.seed": 7, "finetune.lr": 3e-05}) == {
        "finetune": "finetune.lr changed", "evaluate_finetune": "finetune is stale"}
