"""The learning-curve sweep: points reuse one extraction, subsample correctly, and the reading follows the numbers."""
import dataclasses
import json

import pandas as pd
import pytest
from conftest import is_share, run_stage, stage_io
from test_features_head import prepare

from transferlab.core.atomic import read_json, read_splits
from transferlab.core.errors import ParamsError, UserError
from transferlab.evaluate import curve as learning
from transferlab.evaluate import sweep
from transferlab.finetuning import frozen
from transferlab.pipeline import layout, stages
from transferlab.pipeline.adapters.sweep_aggregate import metric_files
from transferlab.probe import features, head
from transferlab.settings.params import sweep_point, validate
from transferlab.settings.sections import Model


def sweep_params(**over):
    return validate({"data": {"dataset": "folder", "source": "."},
                     "model": {"backbone": "resnet18", "weights": "none", "image_size": 32},
                     "features": {"batch_size": 4, "num_workers": 0},
                     "head": {"C_grid": [1.0], "max_iter": 300},
                     "finetune": {"enabled": True, "unfreeze": 1, "epochs": 1, "batch_size": 4, "num_workers": 0},
                     "sweep": {"backbones": ["resnet18"], "fractions": [0.25, 1.0], "seeds": [0, 1], **over}})


def test_points_reuse_the_cached_features_and_subsample_per_class(tmp_path, monkeypatch):
    data_dir = prepare(tmp_path, {"ant": 16, "bee": 16, "cat": 16})
    params = sweep_params()
    run_stage("extract", params, stage_io("extract", data_dir))
    run_stage("frozen_cache", params, stage_io("frozen_cache", data_dir))

    def no_extraction(*args, **kwargs):
        raise AssertionError("the sweep must not extract what the main pipeline extracted")

    monkeypatch.setattr(features, "extract", no_extraction)
    extracted = stage_io("sweep_extract", data_dir, wildcards={"backbone": "resnet18"})
    run_stage("sweep_extract", params, extracted)  # model.backbone: the extract stage's files, copied
    main = tmp_path / "results" / "features" / "train.npz"
    assert extracted.output.train.read_bytes() == main.read_bytes() and not extracted.output.train.samefile(main)
    caches = {}
    for seed in (0, 1):  # seed 0 is finetune.seed: the main cache, copied; seed 1 has its own views
        files = stage_io("sweep_frozen", data_dir, wildcards={"backbone": "resnet18", "seed": str(seed)})
        caches[seed] = run_stage("sweep_frozen", params, files)
        assert caches[seed]["cached"] and sorted(caches[seed]["parts"]) == (
            sorted(frozen.parts(params.finetune, frozen.EVALUATION_PARTS if seed == 0 else frozen.SWEEP_PARTS)))
        part = frozen.train_part(params.finetune, "strong")
        same = (files.output.meta.parent / f"{part}.npy").read_bytes() == (tmp_path / f"results/frozen/{part}.npy").read_bytes()
        assert same == (seed == 0)
    assert caches[1]["seeds"] == [frozen.epoch_seed(1, 1)]
    trained_on, fit = {}, head.fit

    def recording_fit(train, val, settings):
        trained_on[len(trained_on)] = pd.Series(train["labels"], index=train["ids"])
        return fit(train, val, settings)

    for stage in ("train_head", "evaluate_probe", "finetune", "evaluate_finetune"):
        run_stage(stage, params, stage_io(stage, data_dir))
    monkeypatch.setattr(head, "fit", recording_fit)
    results, heads, points = {}, {}, {}
    for backbone, fraction, seed in layout.points(params):
        points[fraction, seed] = stage_io("sweep_point", data_dir, wildcards={
            "backbone": backbone, "fraction": layout.label(fraction), "seed": str(seed)})
        fits = len(trained_on)
        results[fraction, seed] = run_stage("sweep_point", params, points[fraction, seed])
        if len(trained_on) > fits:
            heads[fraction, seed] = trained_on[fits]
    assert set(results) == {(0.25, 0), (0.25, 1), (1.0, 0), (1.0, 1)}
    assert set(heads) == {(0.25, 0), (0.25, 1), (1.0, 1)}  # (1.0, 0) is the main run: read, not refitted
    main = points[1.0, 0].input
    computed = sweep.run_point(params, "resnet18", 1.0, 0, read_json(main.dataset), read_splits(main.splits),
                               main.features, main.frozen.parent)
    for method in ("probe", "finetune"):
        reused = results[1.0, 0][method]
        assert set(reused) == set(computed[method])
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "log_loss"):
            assert reused[key] == pytest.approx(computed[method][key], rel=1e-6), (method, key)
        assert reused["interval"] == computed[method]["interval"]
    assert results[1.0, 0]["vs_probe"] == computed["vs_probe"]
    assert {k: v for k, v in results[1.0, 0].items() if k not in ("probe", "finetune", "made_from")} == {
        k: v for k, v in computed.items() if k not in ("probe", "finetune")}  # made_from: added by the stage
    assert results[1.0, 0]["made_from"] == results[0.25, 0]["made_from"] == stages.made_from(
        params, "sweep_point", read_json(main.dataset))
    full = pd.read_csv(data_dir / "splits" / "train.csv")  # 8 per class
    assert results[1.0, 0]["train_images"] == len(full) == 24
    assert results[0.25, 0]["train_images"] == 6 and results[0.25, 0]["images_per_class"] == 2
    small = [heads[0.25, s] for s in (0, 1)]
    assert set(small[0].index) <= set(full["path"]) and set(small[0].index) != set(small[1].index)
    assert small[0].value_counts().tolist() == [2, 2, 2]
    for result in results.values():
        assert result["test_images"] == 12 and is_share(result["probe"]["accuracy"], 12)
        assert result["finetune"]["epochs_run"] == 1 and result["finetune"]["from_cache"]

    files = metric_files(params, tmp_path / "results" / "sweep")
    summary = run_stage("sweep_aggregate", params, stage_io("sweep_aggregate", data_dir))
    curve = pd.read_csv(tmp_path / "results" / "curve" / "curve.csv")
    assert summary["points"] == 4 and len(curve) == 4 and (curve["seeds"] == 2).all()
    assert (curve["accuracy_min"] <= curve["accuracy"]).all() and (curve["accuracy"] <= curve["accuracy_max"]).all()
    assert (curve["accuracy_low"] <= curve["accuracy_high"]).all() and summary["confidence"] == 0.95
    finetuned = curve[curve["method"] == "finetune"]
    assert set(finetuned["verdict"]) <= {"finetune", "probe", "within"}
    assert (finetuned["difference_low"] <= finetuned["difference_high"]).all()
    point = json.loads(files[0].read_text())
    assert point["vs_probe"]["test_images"] == 12 and sum(point["vs_probe"]["only_correct"].values()) <= 12
    assert summary["made_from"]["dataset"]["dataset"] == "folder" and summary["made_from"]["classes"] == 3
    assert summary["made_from"]["params"] == {"sweep": dataclasses.asdict(params.sweep)}
    assert (tmp_path / "results" / "curve" / "curve.png").stat().st_size > 5000
    assert summary["reading"].startswith("resnet18:")
    shown = json.loads((tmp_path / "results" / "curve" / "metrics.json").read_text())
    assert set(shown["resnet18"]) == {"25% of train", "100% of train"}
    assert shown["resnet18"]["25% of train"]["probe"] == pytest.approx(
        curve.query("method == 'probe' and fraction == 0.25")["accuracy"].item(), abs=1e-6)


def test_metric_files_accept_any_spelling_and_name_missing_points(tmp_path):
    params = sweep_params(seeds=[0])
    for folder in ("0.25", "1"):  # DVC writes an integer-valued fraction as the YAML spelled it
        path = tmp_path / "sweep" / "resnet18" / folder / "0" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text("{}")
    assert len(metric_files(params, tmp_path / "sweep")) == 2
    with pytest.raises(UserError, match="0.5"):
        metric_files(sweep_params(seeds=[0], fractions=[0.25, 0.5, 1.0]), tmp_path / "sweep")


def curve_of(probe, finetune, verdicts, per_class=(2, 5, 10, 20), rates=("1e-05", "3e-05", "3e-05", "0.0001"),
             candidates=3):
    rows = []
    for method, accs in (("probe", probe), ("finetune", finetune)):
        for f, (n, acc) in enumerate(zip(per_class, accs)):
            row = {"backbone": "mobilenet_v2", "method": method, "fraction": [0.1, 0.25, 0.5, 1.0][f],
                   "images_per_class": n, "test_images": 230, "accuracy": acc, "accuracy_min": acc,
                   "accuracy_max": acc, "seeds": 1, "chosen": "1" if method == "probe" else rates[f],
                   "candidates": None if method == "probe" else candidates}
            if method == "finetune":
                gap = acc - probe[f]
                row.update(difference=gap, difference_low=gap - 0.02, difference_high=gap + 0.02, mcnemar_p=0.01,
                           verdict=verdicts[f])
            rows.append(row)
    return pd.DataFrame(rows)


def test_reading_says_where_the_lead_is_larger_than_its_uncertainty():
    text = learning.reading(curve_of([0.5, 0.7, 0.8, 0.85], [0.45, 0.7, 0.83, 0.9],
                                  ["probe", "within", "finetune", "finetune"]))
    assert "fine-tuning leads by more than its uncertainty at 10, 20 images per class (+3.0 points" in text
    assert "the frozen features lead by more than the uncertainty at 2 images per class (-5.0 points" in text
    assert "at 5 images per class the difference is within the uncertainty of 230 test images (+0.0 points" in text
    assert "Fine-tuning pays off from 10 training images per class on." in text
    assert ("setting chosen on validation (of 3 candidates) at each size: 1e-05 at 2, 3e-05 at 5, 3e-05 at 10, "
            "0.0001 at 20 images per class.") in text
    one_rate = learning.reading(curve_of([0.5] * 4, [0.5] * 4, ["within"] * 4, rates=["1e-05"] * 4, candidates=1))
    assert "Every size fine-tunes at the one setting: 1e-05." in one_rate
    text = learning.reading(curve_of([0.5, 0.7, 0.8, 0.85], [0.52, 0.75, 0.8, 0.86], ["within"] * 4))
    assert "leads" not in text and "within the uncertainty of 230 test images" in text
    assert "Nowhere does fine-tuning beat the frozen features by more than the test set can tell" in text
    text = learning.reading(curve_of([0.5, 0.7, 0.8, 0.85], [0.52, 0.75, 0.8, 0.86],
                                  ["within", "finetune", "within", "within"]))
    assert "at 5 images per class (+5.0 points" in text and "not consistent" in text
    only_probe = curve_of([0.5, 0.7, 0.8, 0.85], [0, 0, 0, 0], ["within"] * 4)
    assert "only the frozen-features probe ran" in learning.reading(only_probe[only_probe["method"] == "probe"])


def test_a_lead_counts_only_where_every_seed_shows_it():
    rows = [{"backbone": "b", "method": "finetune", "fraction": 0.5, "seed": s, "images_per_class": 5,
             "test_images": 10, "accuracy": 0.8, "accuracy_low": 0.6, "accuracy_high": 0.9, "difference": d,
             "difference_low": d - 0.01, "difference_high": d + 0.01, "mcnemar_p": p, "verdict": v, "chosen": lr,
             "candidates": 3}
            for s, d, p, v, lr in ((0, 0.1, 0.01, "finetune", 3e-5), (1, 0.02, 0.4, "within", 1e-5))]
    got = learning.curve(pd.DataFrame(rows)).iloc[0]
    assert got["verdict"] == "within" and got["mcnemar_p"] == 0.4 and got["difference"] == pytest.approx(0.06)
    assert got["chosen"] == "1e-05 / 3e-05"  # each seed's search chose its own rate
    assert learning.curve(pd.DataFrame(rows[:1])).iloc[0]["verdict"] == "finetune"


def test_sweep_params_are_validated():
    from transferlab.models import families

    with pytest.raises(ParamsError, match="sweep.backbones"):
        families.check_names(sweep_params(backbones=["resnet7"]))
    with pytest.raises(ParamsError, match="sweep.fractions"):
        sweep_params(fractions=[0.0, 0.5])
    assert sweep_params(fractions=["0.5"]).sweep.fractions == [0.5]  # cast like dvc exp run -S writes


def test_other_backbones_use_their_default_weights():
    params = sweep_params().updated(model={"checkpoint": "x.pth"})
    assert sweep_point(params, "resnet18").model.checkpoint == "x.pth"
    other = sweep_point(params, "mobilenet_v3_small").model
    assert other == Model("mobilenet_v3_small", "DEFAULT", None, params.model.image_size)
    assert params.model.checkpoint == "x.pth" and params.model.backbone == "resnet18"  # the original is untouched


def test_a_subsample_trains_on_the_same_views_from_the_cache_as_on_the_fly(tmp_path):
    data_dir = prepare(tmp_path, {"ant": 12, "bee": 12, "cat": 12})
    params = sweep_params(fractions=[0.5], seeds=[3])
    params = params.updated(features={"engine": "torch"})
    run_stage("extract", params, stage_io("extract", data_dir))
    run_stage("frozen_cache", params, stage_io("frozen_cache", data_dir))
    wildcards = {"backbone": "resnet18", "fraction": "0.5", "seed": "3"}
    run_stage("sweep_extract", params, stage_io("sweep_extract", data_dir, wildcards=wildcards))
    run_stage("sweep_frozen", params, stage_io("sweep_frozen", data_dir, wildcards=wildcards))
    cached = run_stage("sweep_point", params, stage_io("sweep_point", data_dir, wildcards=wildcards))
    params = params.updated(finetune={"cache": "never"})
    never = run_stage("sweep_frozen", params, stage_io("sweep_frozen", data_dir, wildcards=wildcards))
    fly = run_stage("sweep_point", params, stage_io("sweep_point", data_dir, wildcards=wildcards))
    assert not never["cached"] and cached["finetune"]["from_cache"] and not fly["finetune"]["from_cache"]
    assert cached["train_images"] == fly["train_images"] == 9
    for key in ("accuracy", "log_loss", "macro_f1"):
        assert cached["finetune"][key] == pytest.approx(fly["finetune"][key], rel=1e-5, abs=1e-7)


def test_the_main_run_is_one_point_of_the_grid():
    params = sweep_params(backbones=["resnet18", "mobilenet_v3_small"], fractions=[0.5, 1.0], seeds=[0, 1])
    assert [p for p in layout.points(params) if sweep.is_main(params, *p)] == [("resnet18", 1.0, 0)]
    params = params.updated(finetune={"enabled": False})  # the probe does not depend on the seed at fraction 1
    assert [p for p in layout.points(params) if sweep.is_main(params, *p)] == [("resnet18", 1.0, 0),
                                                                                ("resnet18", 1.0, 1)]
