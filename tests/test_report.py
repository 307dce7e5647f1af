"""The HTML report on a tiny pipeline run: sections, values equal to the metrics, escaping, probe-only runs."""
import json
import re
from pathlib import Path

import pytest

from conftest import ROOT
from test_features_head import prepare, tiny_params
from transferlab import evaluation, features, finetune, head, report, visualize
from transferlab.atomic import write_json
from transferlab.params import validate
from transferlab.split import SPLITS

EVIL = "<script>alert(1)"


def pipeline(tmp_path: Path, with_finetune: bool) -> tuple[dict, Path, Path]:
    """download → … → evaluate (and fine-tune) through the library, outputs laid out as the stages write them."""
    data_dir = prepare(tmp_path, {"ant": 8, EVIL: 8, "cat": 8})
    params = tiny_params()
    params["finetune"].update({"enabled": with_finetune, "epochs": 1, "batch_size": 8, "num_workers": 0})
    params["visualize"].update({"enabled": with_finetune, "steps": 5, "image_size": 32, "adversarial_steps": 3})
    params = validate(params)
    results = tmp_path / "results"
    features.run(params, data_dir, results / "features")
    cached = {s: features.load(results / "features" / f"{s}.npz") for s in SPLITS}
    model, _ = head.fit(cached["train"], cached["val"], params["head"])
    head.save(model, results / "head" / "model.npz", list(cached["train"]["classes"]))
    write_json(results / "head" / "summary.json", {"C": 1.0, "seconds": 0.5, "train_rows": 12,
                                                   "trainable_parameters": head.parameter_count(model)})
    names = [str(c) for c in cached["train"]["classes"]]
    proba = {s: head.predict_proba(model, cached[s]["features"], 3) for s in SPLITS}
    labels = {s: cached[s]["labels"] for s in SPLITS}
    evaluation.evaluate("probe", proba, labels, cached["test"]["ids"], names, results / "metrics", results / "eval")
    summary = finetune.train(params, data_dir, results / "head" / "model.npz", results / "finetune")
    if with_finetune:
        import pandas as pd

        net = finetune.load(params["model"], results / "finetune" / "model.pt", 3)
        root = Path(json.loads((data_dir / "dataset.json").read_text())["root"])
        out = {s: finetune.predict(net, pd.read_csv(data_dir / "splits" / f"{s}.csv"), root, names, params["model"],
                                   8) for s in SPLITS}
        evaluation.evaluate("finetune", {s: o[0] for s, o in out.items()}, {s: o[1] for s, o in out.items()},
                            cached["test"]["ids"], names, results / "metrics", results / "eval")
    else:
        evaluation.skipped("finetune", summary["reason"], results / "metrics", results / "eval")
    visualize.run(params, data_dir, results, results / "visualize")
    return params, data_dir, results


def render(tmp_path, with_finetune):
    params, data_dir, results = pipeline(tmp_path, with_finetune)
    out = report.render(params, data_dir, results, ROOT / "workflow" / "report", results / "report.html",
                        results / "report")
    return out.read_text(), results


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
                  "Images the two methods disagree on", "Stage costs"):
        assert title in html
    shown = json.loads((results / "visualize" / "summary.json").read_text())
    assert shown["model"] == "fine-tuned model" and set(shown["ideal"]) == {"with_tv", "without_tv"}
    pictures = 4 + 2 + 3 * len(shown["adversarial"]) + 1  # plots, ideal images, attacks, feature maps
    assert html.count('src="data:image/png;base64,') == pictures
    assert not re.search(r'(src|href)="(http|//|/)', html)  # nothing external: opens offline from file://
    for name in ("confusion", "per_class", "learning_curves", "reliability"):
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
    assert "not run (finetune.enabled: false)" in html
    assert "fine-tune not run" not in html  # that text is inside the figure, not the page
    assert cell(html, "probe", "accuracy")
    assert 'data-method="finetune"' not in html
    assert "not run (visualize.enabled: false)" in html
