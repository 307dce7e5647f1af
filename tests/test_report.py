"""The HTML report on a tiny pipeline run: sections, values equal to the metrics, escaping, probe-only runs."""
import json
import re
import shutil
from html import unescape
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, run_stage, stage_io
from test_features_head import prepare, tiny_params

from transferlab.core.atomic import read_arrays, write_csv, write_json
from transferlab.finetuning import tuning
from transferlab.pipeline import stages
from transferlab.probe import head
from transferlab.reporting import report
from transferlab.settings.params import select
from transferlab.settings.sections import Params

EVIL = "<script>alert(1)"


def pipeline(tmp_path: Path, with_finetune: bool, classes=("ant", EVIL, "cat")) -> tuple[dict, Path, Path]:
    """download → … → evaluate (and fine-tune) through the library, outputs laid out as the stages write them."""
    data_dir = prepare(tmp_path, {c: 8 for c in classes})
    params = tiny_params()
    params = params.updated(finetune={"enabled": with_finetune, "epochs": 1, "batch_size": 8, "num_workers": 0})
    params = params.updated(visualize={"enabled": with_finetune, "steps": 5, "image_size": 32, "adversarial_steps": 3})
    run_stage("extract", params, stage_io("extract", data_dir))
    cached = {s: read_arrays(path) for s, path in vars(stage_io("train_head", data_dir).input).items()}
    model, search = head.fit(cached["train"], cached["val"], params.head)
    trained = stage_io("train_head", data_dir).output
    head.save(model, trained.model, list(cached["train"]["classes"]))
    write_csv(trained.search, search)
    write_json(trained.summary, {"C": float(search.loc[search["chosen"], "C"].iloc[0]), "seconds": 0.5, "train_rows": 12,
                                 "trainable_parameters": head.parameter_count(model)})
    for stage in ("evaluate_probe", "frozen_cache", "finetune", "evaluate_finetune", "visualize"):
        stages.execute(stage, stages.runner(stage), params, stage_io(stage, data_dir))
    return params, data_dir, tmp_path / "results"


def page(params: Params, data_dir: Path) -> Path:
    return run_stage("report", params, stage_io("report", data_dir, template=ROOT / "workflow" / "report" / "report.html.j2"))


def render(tmp_path, with_finetune):
    params, data_dir, results = pipeline(tmp_path, with_finetune)
    return page(params, data_dir).read_text(), results


def cell(html: str, method: str, key: str) -> str:
    match = re.search(rf'data-method="{method}" data-key="{key}">([^<]*)<', html)
    assert match, (method, key)
    return match.group(1)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    return render(tmp_path_factory.mktemp("full"), True)


def test_sections_and_self_contained(full):
    html, results = full
    for section in ("what-ran", "comparison", "plots", "gallery", "costs", "network-knows"):
        assert f'id="{section}"' in html
    for title in ("Confusion matrices", "Per-class accuracy", "Fine-tune learning curves", "Calibration",
                  "Images the two methods disagree on", "Stage costs", "Both arms tuned on validation"):
        assert title in html
    shown = json.loads((results / "visualize" / "summary.json").read_text())
    assert shown["model"] == "fine-tuned model" and set(shown["ideal"]) == {"with_tv", "without_tv"}
    for item in shown["ideal"].values():  # beside each ideal image: its score over random views, steps, top-5
        assert f"over 32 crops, flips, rescales: {item['robust_probability']:.4f}" in html
        assert f"{item['steps']} steps, {item['seconds']} s" in html
    assert "ImageNet top-5: none: model.weights is none" in html  # random-init tiny model: no ImageNet classes
    assert f"Over 32 other such views p = {shown['ideal']['with_tv']['robust_probability']:.3f}" in html
    pictures = 5 + 2 + 3 * len(shown["adversarial"]) + 1  # plots, ideal images, attacks, feature maps
    assert html.count('src="data:image/png;base64,') == pictures
    assert not re.search(r'(src|href)="(http|//|/)', html)  # nothing external: opens offline from file://
    for name in ("confusion", "per_class", "learning_curves", "reliability", "search"):
        assert (results / "report" / f"{name}.png").stat().st_size > 1000


def test_table_values_equal_metrics_json(full):
    html, results = full
    for method in ("probe", "finetune"):
        metrics = json.loads((results / "metrics" / f"{method}.json").read_text())
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "log_loss", "train_val_gap"):
            assert float(cell(html, method, key)) == pytest.approx(metrics[key], abs=5e-5), (method, key)
    ft = json.loads((results / "finetune" / "summary.json").read_text())
    assert int(cell(html, "finetune", "trainable_parameters").replace(",", "")) == ft["trainable_parameters"]


def test_html_looking_class_name_is_escaped(full):
    html, _ = full
    assert EVIL not in html
    assert "&lt;script&gt;alert(1)" in html


def test_probe_only_run_renders(tmp_path):
    html, _ = render(tmp_path, False)
    assert "Only the frozen features + linear head ran: test accuracy" in html and 'id="paired-table"' not in html
    assert "not run (finetune.enabled: false)" in html
    assert "fine-tune not run" not in html  # that text is inside the figure, not the page
    assert cell(html, "probe", "accuracy")
    assert 'data-method="finetune"' not in html
    assert "not run (visualize.enabled: false)" in html


def test_verdict_opens_the_page_with_its_numbers(full):
    html, results = full
    assert html.index('id="verdict"') < html.index('id="comparison"') < html.index('id="per-split-counts"')
    assert re.search(r'<details><summary>Images per class and split', html)  # the class table is folded
    metrics = {m: json.loads((results / "metrics" / f"{m}.json").read_text()) for m in ("probe", "finetune")}
    pair = metrics["finetune"]["vs_probe"]
    text = re.search(r'id="verdict-text"[^>]*>([^<]*)<', html).group(1)
    assert (f"{abs(pair['difference']) * 100:.1f} points" if pair["difference"] else "the same test accuracy") in text
    assert f"{pair['low'] * 100:+.1f} to {pair['high'] * 100:+.1f} points" in text and "McNemar p" in text
    assert re.search(r"costs \d+\.\d× the compute", text)
    for method in ("probe", "finetune"):
        low, high = (metrics[method]["interval"]["accuracy"][k] for k in ("low", "high"))
        assert f'data-interval="accuracy"> ({low:.3f}–{high:.3f})' in html.replace(f'data-method="{method}"', "")
    assert 'id="paired-table"' in html and f"p = {pair['mcnemar_p']:.3g}" in html
    assert html.count('class="from">Made from folder') >= 6  # every section names where it came from
    assert 'id="ideal-caption"' in html and "It is not a photo of the class" in html


def made_up(difference, low, high, p, only=(10, 14)):
    probe = {"accuracy": 0.80, "test_images": 230, "interval": {"accuracy": {"low": 0.75, "high": 0.85}}}
    finetune = {"accuracy": 0.80 + difference, "vs_probe": {
        "difference": difference, "low": low, "high": high, "mcnemar_p": p, "test_images": 230,
        "only_correct": {"probe": only[0], "finetune": only[1]}}}
    return probe, finetune


@pytest.mark.parametrize("difference, low, high, p, expected", [
    (0.017, -0.013, 0.048, 0.3, "Fine-tuning is 1.7 points ahead, within the uncertainty of 230 test images"),
    (-0.017, -0.048, 0.013, 0.3, "The frozen features are 1.7 points ahead, within the uncertainty of 230 test"),
    (0.061, 0.030, 0.091, 0.0004, "Fine-tuning is 6.1 points ahead of the frozen features"),
    (-0.061, -0.091, -0.030, 0.0004, "The frozen features are 6.1 points ahead of fine-tuning"),
    (0.030, 0.001, 0.060, 0.07, "Fine-tuning is 3.0 points ahead, within the uncertainty"),  # interval clear of 0, test not
])
def test_verdict_wording_follows_the_numbers(difference, low, high, p, expected):
    text = report.verdict(*made_up(difference, low, high, p), cost_ratio=9.04, confidence=0.95)
    assert text.startswith(expected.split(",")[0]) and expected in text
    assert "9.0× the compute" in text and f"{low * 100:+.1f} to {high * 100:+.1f} points" in text
    if "within" in expected:
        assert "keep the frozen features, or collect more test images: about" in text
    elif difference > 0:
        assert "the fine-tuned model is the better choice" in text
    else:
        assert "Keep the backbone frozen" in text
    assert ("p < 0.001" if p < 0.001 else f"p = {p:.2g}") in text


def test_verdict_without_a_fine_tune_and_at_another_confidence():
    probe, finetune = made_up(0.03, 0.001, 0.06, 0.03)
    assert "more than the uncertainty" in report.verdict(probe, finetune, 2.0, 0.95)
    assert "within the uncertainty" in report.verdict(probe, finetune, 2.0, 0.99)
    alone = report.verdict(probe, None, None, 0.95)
    assert alone.startswith("Only the frozen features + linear head ran: test accuracy 80.0% (95% interval 75.0% to "
                            "85.0% on 230 test images)")


def test_sections_from_another_dataset_or_a_disabled_stage_are_not_shown(full, tmp_path):
    _, old = full
    params, data_dir, results = pipeline(tmp_path, False, classes=("dog", "emu", "fox"))
    shutil.rmtree(results / "visualize")  # as under Snakemake, which runs no disabled stage: the previous
    shutil.copytree(old / "visualize", results / "visualize")  # dataset's outputs are still there
    old_stamp = json.loads((old / "visualize" / "summary.json").read_text())["made_from"]
    (results / "curve").mkdir()
    write_json(results / "curve" / "summary.json", {"points": 1, "reading": "OLD CURVE", "confidence": 0.95,
                                                    "made_from": {**old_stamp, "params": select(params, ["sweep"])}})

    params = params.updated(sweep={"enabled": False})
    html = page(params, data_dir).read_text()  # visualize and sweep off, as the new run's params say
    assert "not run (visualize.enabled: false)" in html and "not run (sweep.enabled: false)" in html
    assert "OLD CURVE" not in html and 'alt="ideal' not in html and "<code>visualize.steps</code>" not in html
    on = params.updated(visualize={"enabled": True}, sweep={"enabled": True})
    html = page(on, data_dir).read_text()  # enabled, but the outputs on disk were made from the other dataset
    assert "not shown: results of the visualize stage were made from another dataset" in html
    assert "not shown: results of the sweep_aggregate stage were made from another dataset" in html
    assert "OLD CURVE" not in html and 'alt="ideal' not in html
    assert "<code>visualize.steps</code>" in html  # an enabled stage's params are listed


def test_comparison_shows_tta_beside_plain_accuracy(full):
    html, results = full
    tuned = json.loads((results / "metrics" / "finetune.json").read_text())
    assert cell(html, "finetune", "tta_accuracy").strip() == f"{tuned['tta']['accuracy']:.4f}"
    low, high = tuned["tta"]["interval"]["accuracy"]["low"], tuned["tta"]["interval"]["accuracy"]["high"]
    assert f'data-interval="tta_accuracy"> ({low:.3f}–{high:.3f})' in html
    assert "— (cached test features: one view)" in html


def test_verdict_says_how_each_arm_was_tuned(full):
    html, results = full
    verdict = unescape(re.search(r'id="verdict-text"[^>]*>([^<]*)<', html).group(1))
    summary = json.loads((results / "finetune" / "summary.json").read_text())
    search = pd.read_csv(results / "finetune" / "search.csv")
    chosen = pd.read_csv(results / "head" / "search.csv").query("chosen")["C"].iloc[0]  # the head's own choice
    assert summary["candidates"] == 6 and f"C = {chosen:g} (of 4 candidates)" in verdict  # 3 augmentations × 2 depths
    blocks = f"{summary['unfreeze']} block{'s' if summary['unfreeze'] != 1 else ''}"
    assert (f"the fine-tune's augmentation {summary['augment']}, {blocks}, lr {summary['lr']:g}" in verdict
            and f"α {summary['alpha']:g} (of 6 candidates" in verdict)
    best = tuning.scores(search).groupby("augment")["val_log_loss"].min()  # why the other augmentations lost
    assert "Best validation log-loss per augmentation: " in verdict
    assert all(f"{name} {loss:.3f}" in verdict for name, loss in best.items())
    kept = report.tuned({"searched": {"head": pd.DataFrame({"C": [0.1, 1.0]}), "finetune": None},
                         "head_summary": {"C": 0.1}, "finetune": {**summary, "improved": False, "pruned": 4}})
    assert kept.endswith("the fine-tune kept its start, which none of its 6 candidates, 4 stopped early by the "
                         "pruner beat.") and "augmentation" not in kept  # nothing was chosen but the start
    info = {"searched": {"head": pd.DataFrame({"C": [0.1, 1.0]}), "finetune": None}, "head_summary": {"C": 0.1},
            "finetune": {**summary, "lr": 3e-5, "candidates": 1, "augment": "none", "unfreeze": 2, "alpha": 1.0}}
    assert report.tuned(info) == ("Tuned on the validation split: the probe's C = 0.1 (of 2 candidates); the fine-tune "
                                  f"ran at its one setting, augmentation none, 2 blocks, lr 3e-05 (head "
                                  f"{summary['head_lr']:g}, weight decay {summary['weight_decay']:g}), α 1, not tuned "
                                  f"(give finetune.lr, augment or unfreeze a list, or lr auto, for a comparison of two "
                                  f"tuned arms).")


def test_class_names_that_look_like_numbers_or_missing_values_survive_every_file(tmp_path):
    """Folders named 0, 007, NA and True (as many datasets name theirs): every list, table and page written and read
    again keeps the names exactly; pandas' type inference would read 0 and 007 as integers and NA as missing."""
    from transferlab.serve import predict

    names = ("0", "007", "NA", "True")
    params, data_dir, results = pipeline(tmp_path, True, classes=names)
    html = page(params, data_dir).read_text()
    assert json.loads((data_dir / "dataset.json").read_text())["classes"] == sorted(names)
    predictions = (results / "eval" / "probe" / "predictions.csv").read_text().splitlines()
    assert {line.split(",")[1] for line in predictions[1:]} <= set(names)
    confusion = (results / "eval" / "probe" / "confusion_matrix.csv").read_text().splitlines()
    assert confusion[0] == "actual," + ",".join(sorted(names))
    for name in names:  # the per-class table of the page, a row per class under its own name
        assert f"<td>{name}</td>" in html or f">{name}<" in html, name
    # the fine-tune's predictions, the exported model (labels.json, model card) and `transferlab predict`
    tuned = (results / "eval" / "finetune" / "predictions.csv").read_text().splitlines()
    assert {line.split(",")[1] for line in tuned[1:]} <= set(names)
    model_dir = tmp_path / "model"
    stages.execute("export", stages.runner("export"), params, stages.io("export", data_dir.parent, model_dir,
                                                           template=ROOT / "workflow/report/model_card.md.j2"))
    assert json.loads((model_dir / "labels.json").read_text()) == sorted(names)
    assert "into 4 classes" in (model_dir / "model_card.md").read_text()  # the names are labels.json's
    photos = sorted((data_dir.parent / "src").rglob("*.jpg"))[:4]
    for classifier, _ in (predict.from_model_dir(model_dir), predict.from_project(data_dir.parent, "finetune"),
                          predict.from_project(data_dir.parent, "probe")):
        assert classifier.labels == sorted(names)
        readable, proba, _ = predict.classify(classifier, photos)
        assert set(predict.table(readable["path"], proba, classifier.labels)["label"]) <= set(names)
