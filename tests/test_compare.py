"""The statistics of comparing runs, on constructed predictions: grouping, seed pooling, pairing, Holm."""
import numpy as np
import pytest

from transferlab.evaluate import compare, stats


def correct(right: int, of: int = 40, shift: int = 0) -> np.ndarray:
    """`right` of `of` images right, the run of right answers starting at image `shift`."""
    out = np.zeros(of, bool)
    out[(np.arange(right) + shift) % of] = True
    return out


def run(lr: float, seed: int, right: np.ndarray, val: float = 0.5, data_seed: int = 42, test_list: str = "a"):
    return compare.Run(f"lr {lr} seed {seed}", {"finetune.lr": lr, "finetune.seed": seed, "data.seed": data_seed,
                                               "head.max_iter": 2000}, test_list, right, val)


def test_runs_that_differ_only_in_seeds_pool_into_one_row_per_setting():
    runs = [run(1e-5, 0, correct(30)), run(1e-5, 1, correct(32)), run(1e-4, 0, correct(20)),
            run(1e-4, 1, correct(24))]
    assert compare.changed(runs) == ["finetune.lr", "finetune.seed"]
    table = compare.rows(runs, 0.95)
    assert [(row.setting, row.seeds) for row in table] == [({"finetune.lr": 1e-5}, 2), ({"finetune.lr": 1e-4}, 2)]
    assert table[0].accuracy == pytest.approx(0.775) and table[1].accuracy == pytest.approx(0.55)


def test_a_pooled_interval_is_student_s_over_the_seeds_never_narrower_than_wilson_s_over_the_images():
    low, high = compare.pooled_interval([0.8, 0.85, 0.9], 40, 0.95)
    half = 4.302653 * 0.05 / np.sqrt(3)  # t(0.975, 2 degrees of freedom) × the standard error of the seeds' mean
    wilson = stats.wilson(34, 40, 0.95)  # the mean, 0.85, is 34 of the 40 test images the seeds share
    assert (low, high) == pytest.approx((min(wilson[0], 0.85 - half), max(wilson[1], 0.85 + half)), abs=1e-6)
    assert wilson[0] < 0.85 - half and high == pytest.approx(0.85 + half)  # each bound from the wider one
    assert compare.pooled_interval([0.5, 0.5, 0.5], 40, 0.95) == pytest.approx(stats.wilson(20, 40, 0.95))
    assert compare.pooled_interval([0.75], 40, 0.95) == pytest.approx((0.5981, 0.8581), abs=1e-4)  # Wilson, 30 of 40


def test_a_row_against_the_baseline_is_paired_image_by_image_with_mcnemar_s_exact_p():
    base = correct(20)
    better = base.copy()
    better[[0, 1]] = False      # 2 images only the baseline gets right
    better[20:30] = True        # 10 only the row gets right
    baseline, row = (compare.rows([run(lr, 0, right)], 0.95)[0] for lr, right in ((1e-5, base), (1e-4, better)))
    pair = compare.versus(row, baseline, 0.95)
    assert pair["paired"] and (pair["only_row"], pair["only_baseline"], pair["pairs"]) == (10, 2, 40)
    assert pair["difference"] == pytest.approx(0.2)
    assert pair["mcnemar_p"] == pytest.approx(2 * (1 + 12 + 66) / 2**12)  # two-sided binomial, 2 of 12 discordant
    assert pair["low"] < 0.2 < pair["high"]


def test_seeds_are_paired_with_the_baseline_s_seeds_in_turn_and_stacked():
    baseline = compare.rows([run(1e-5, 0, correct(20)), run(1e-5, 1, correct(20, shift=5))], 0.95)[0]
    row = compare.rows([run(1e-4, 0, correct(25)), run(1e-4, 1, correct(25, shift=5))], 0.95)[0]
    pair = compare.versus(row, baseline, 0.95)
    assert (pair["only_row"], pair["only_baseline"], pair["pairs"]) == (10, 0, 80)


def test_another_test_list_is_shown_unpaired_with_the_param_that_made_it():
    baseline = compare.rows([run(1e-5, 0, correct(20))], 0.95)[0]
    other = compare.rows([run(1e-5, 0, correct(25), data_seed=7, test_list="b")], 0.95)[0]
    pair = compare.versus(other, baseline, 0.95)
    assert not pair["paired"] and pair["reason"] == "another test list (data.seed differs)"
    assert pair["difference"] == pytest.approx(0.125)


def test_a_data_seed_pools_only_runs_on_the_same_test_list():
    runs = [run(1e-5, 0, correct(20)), run(1e-5, 0, correct(22), data_seed=7, test_list="b")]
    assert [row.seeds for row in compare.rows(runs, 0.95)] == [1, 1]


def test_holm_adjusts_in_step_down_order_and_never_decreases():
    assert compare.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert compare.holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert compare.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_the_row_chosen_is_the_best_on_validation_not_on_test():
    table = compare.rows([run(1e-5, 0, correct(35), val=0.6), run(1e-4, 0, correct(25), val=0.7)], 0.95)
    assert compare.chosen_by_validation(table) == 1 and table[0].accuracy > table[1].accuracy


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
    folder.mkdir(parents=True)
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


def test_compare_prints_one_table_per_arm_with_pooled_seeds_and_holm_adjusted_p(tmp_path, capsys):
    from transferlab.serve import cli

    write_run(tmp_path / "base", {"finetune.lr": 1e-5}, {"probe": 20, "finetune": 20}, {"probe": 0.5, "finetune": 0.5})
    for seed, right in ((0, 32), (1, 34)):
        write_run(tmp_path / f"fast{seed}", {"finetune.lr": 1e-4, "finetune.seed": seed},
                  {"probe": 20, "finetune": right}, {"probe": 0.5, "finetune": 0.8})
    write_run(tmp_path / "other", {"finetune.lr": "3e-05", "data.seed": 7}, {"finetune": 30}, {"finetune": 0.6},
              images="other")  # another split: other test images
    assert cli.main(["compare", *(str(tmp_path / name) for name in ("base", "fast0", "fast1", "other"))]) == 0
    out = capsys.readouterr().out
    finetune = out[out.index("finetune (baseline"):]
    lines = [line for line in finetune.splitlines() if line.startswith("| ")]
    # seed params are no column: their runs pool into one row, or (another data.seed) differ in their test list
    assert lines[0] == "| finetune.lr | runs | test accuracy | val accuracy | vs baseline | p (Holm) |"
    assert lines[1].startswith("| 1e-05 | 1 | 0.500 [") and "baseline" in lines[1]
    assert lines[2].startswith("| 0.0001 | 2 | 0.825 [") and "0.800 ✓" in lines[2]
    # the seeds stacked: 12 + 14 images only the row gets right, none only the baseline; one paired row to adjust
    assert "+0.325 [" in lines[2] and lines[2].endswith(f"| {2 * 0.5 ** 26:.3g} |")
    assert lines[3].startswith("| 3e-05 | 1 | 0.750 [")  # written as dvc exp run -S writes it: a number
    assert "+0.250 unpaired: another test list (data.seed differs)" in lines[3]
    assert len(lines) == 4
    assert "probe: one setting in every run (3 runs pooled: 0.500 [0.352, 0.648])" in out  # lr is no probe param


def test_compare_needs_two_folders_with_their_runs(tmp_path):
    from transferlab.serve import cli

    write_run(tmp_path / "base", {}, {"probe": 20}, {"probe": 0.5})
    assert cli.main(["compare", str(tmp_path / "base")]) == 2
    assert cli.main(["compare", str(tmp_path / "base"), str(tmp_path / "missing"), "--project", str(tmp_path)]) == 2
