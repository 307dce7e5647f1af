"""Use a trained model on new images: from a project's outputs (probe or fine-tuned network) or from an
exported model folder (ONNX graph, labels, preprocessing), with optional test-time augmentation."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from transferlab.core.atomic import read_json
from transferlab.core.errors import DamagedFile, UserError
from transferlab.core.project import METHODS
from transferlab.core.project import resolve as resolve_path
from transferlab.data import index
from transferlab.finetuning import finetune
from transferlab.finetuning.network import FineTuneNet, build, load
from transferlab.inference import backends, transforms
from transferlab.inference.batches import device, predict_images, torch_threads
from transferlab.models import backbones
from transferlab.models.backbones import Backbone
from transferlab.models.preprocessing import Preprocessing
from transferlab.pipeline import checks, layout, run_lock
from transferlab.probe import head
from transferlab.settings.sections import Model

RUN_PIPELINE = "run the pipeline first (snakemake --cores 2, or dvc repro)"


@dataclass(frozen=True)
class Classifier:
    """What classifies images: the method, its class names, the preprocessing it expects, and a forward from
    uint8 batches (N, 3, H, W) to class probabilities."""

    method: str
    labels: list[str]
    preprocessing: Preprocessing
    forward: backends.Forward


@dataclass(frozen=True)
class ModelFiles:
    """The run's files a classifier is made from: the extract stage's meta.json, both methods' weights and
    evaluated metrics, whether the fine-tune is on, and the project a relative checkpoint path is resolved in."""

    meta: Path
    probe: Path
    finetune: Path
    metrics: dict[str, Path]
    finetune_enabled: bool
    project: Path


def project_files(project: Path) -> ModelFiles:
    """A project's model files where the stages write them; the fine-tune off where its params.yaml says so
    (Snakemake leaves a disabled fine-tune's earlier outputs in place)."""
    settings = project / "params.yaml"
    raw = yaml.safe_load(settings.read_text()) if settings.exists() else None
    enabled = not (isinstance(raw, dict) and (raw.get("finetune") or {}).get("enabled") is False)
    return ModelFiles(layout.files("extract", project).meta, layout.files("train_head", project).model,
                      layout.files("finetune", project).model,
                      {m: layout.files(f"evaluate_{m}", project).metrics for m in METHODS}, enabled, project)


def evaluated(files: ModelFiles) -> dict[str, dict[str, Any]]:
    """The evaluate stage's metrics of each method that ran and is enabled."""
    found = {m: read_json(path) for m, path in files.metrics.items() if path.exists()}
    if not files.finetune_enabled:
        found.pop("finetune", None)
    return {m: r for m, r in found.items() if not r.get("skipped")}


def choose(files: ModelFiles) -> tuple[str, str]:
    """The method with the higher validation accuracy (never test) and why; the probe on a tie (it is cheaper)."""
    ran = evaluated(files)
    if "probe" not in ran:
        raise UserError(f"{files.metrics['probe']}: no evaluated model in this project; {RUN_PIPELINE}")
    probe = ran["probe"]["val_accuracy"]
    if "finetune" not in ran:
        return "probe", "the fine-tune did not run (finetune.enabled: false, or its stages have not run)"
    tuned = ran["finetune"]["val_accuracy"]
    if tuned > probe:
        return "finetune", f"higher validation accuracy: {tuned:.4f} vs the probe's {probe:.4f}"
    return "probe", f"validation accuracy {probe:.4f} at least the fine-tune's {tuned:.4f}, at a fraction of the cost"


@dataclass(frozen=True)
class Extracted:
    """The backbone as the extract stage ran it, resolved, with the engine and precision that computed the probe's
    features, and the classes in order."""
    backbone: Backbone
    engine: str
    precision: str
    classes: list[str]


def extracted(files: ModelFiles) -> Extracted:
    """The extract stage's backbone (its meta.json), checkpoint relative to the project."""
    if not files.meta.exists():
        raise UserError(f"{files.meta}: this project has no trained model; {RUN_PIPELINE}")
    meta = read_json(files.meta)
    checkpoint = meta["checkpoint"] and str(resolve_path(meta["checkpoint"], files.project))
    backbone = backbones.resolved(Model(meta["backbone"], meta["weights"], checkpoint, meta["image_size"]))
    return Extracted(backbone, meta["engine"], meta["precision"], meta["classes"])


def network(files: ModelFiles, method: str, model: Extracted) -> FineTuneNet:
    """The method's classifier as one torch network: backbone + the probe's head, or the fine-tuned network."""
    if method == "probe":
        return build(model.backbone, head.linear(files.probe)).eval()
    if not files.finetune.exists():
        raise UserError(f"{files.finetune}: no fine-tuned model (finetune.enabled: false, or the finetune stage has "
                        f"not run)")
    return load(model.backbone, files.finetune, len(model.classes))


def resolve(files: ModelFiles, method: str) -> tuple[str, str]:
    """`best` chosen by validation accuracy, or a named method that has been evaluated; and why."""
    if method == "best":
        return choose(files)
    if method not in evaluated(files):
        raise UserError(f"{files.metrics[method]}: the {method} model has not been evaluated; {RUN_PIPELINE}")
    return method, "asked for"


def from_project(project: Path, method: str = "best") -> tuple[Classifier, str]:
    """A project's trained classifier, and why it was chosen; read under the project's run lock, shared (no run
    writes the files while they are read: run_lock.py).

    The probe runs as the pipeline ran it: the extract stage's engine for the features, then the scikit-learn
    head; so its predictions on the test split equal the evaluate stage's.
    """
    with run_lock.held(project, "transferlab predict", shared=True):
        return _load(project, method)


def _load(project: Path, method: str) -> tuple[Classifier, str]:
    files = project_files(project)
    method, why = resolve(files, method)
    for stage in ("extract", "train_head", "finetune") if method == "finetune" else ("extract", "train_head"):
        checks.verify(layout.files(stage, project).checksums, stage)
    model = extracted(files)
    plain = model.backbone.preprocessing
    if method == "finetune":
        forward = finetune.probabilities(network(files, method, model), model.backbone)
        return Classifier(method, model.classes, plain, forward), why
    probe, labels = head.load(files.probe)
    extractor, _, _ = backbones.load_feature_extractor(model.backbone)
    net = backbones.Normalized(extractor, plain.mean, plain.std, scale=255)
    with tempfile.TemporaryDirectory() as tmp, torch_threads(1):
        features, _ = backends.build(net, model.engine, model.precision, device(), plain.crop,
                                    Path(tmp) / "backbone.onnx")
    forward = lambda images: head.predict_proba(probe, features(images), len(labels))  # noqa: E731
    return Classifier(method, labels, plain, forward), why


def preprocessing_record(plain: Preprocessing) -> dict[str, Any]:
    """What an exported graph expects, for preprocessing.json (and `from_model_dir` reads back)."""
    return {
        "input": {"name": "images", "dtype": "uint8", "layout": "NCHW", "channels": "RGB", "range": [0, 255]},
        "resize_size": plain.resize, "crop_size": plain.crop, "interpolation": plain.interpolation, "antialias": True,
        "steps": [f"resize so the shorter side is {plain.resize} px ({plain.interpolation}, antialiased)",
                  f"centre crop {plain.crop}x{plain.crop}",
                  "uint8 RGB, channels first, batch first"],
        "normalisation": "inside the graph: (pixels - 255 * mean) / (255 * std)",
        "mean": list(plain.mean), "std": list(plain.std),
        "output": {"name": "probabilities", "classes": "labels.json, in order"},
        "tta_views": list(transforms.TTA_VIEWS),
    }


def from_model_dir(folder: Path) -> tuple[Classifier, str]:
    """An exported model folder (model.onnx, labels.json, preprocessing.json), run by ONNX Runtime."""
    exported = layout.files_in("export", folder)
    for path in (exported.model, exported.labels, exported.preprocessing, exported.summary):
        if not path.exists():
            raise UserError(f"{path}: not an exported model folder (the export stage writes it)")
    checks.verify_folder(folder, "export")  # a folder copied with its checksum record: every file as written
    labels = read_json(exported.labels)
    record = read_json(exported.preprocessing)
    try:
        plain = Preprocessing(int(record["resize_size"]), int(record["crop_size"]), str(record["interpolation"]),
                              tuple(map(float, record["mean"])), tuple(map(float, record["std"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise DamagedFile(f"{exported.preprocessing}: not the export stage's record ({type(exc).__name__}: {exc}); "
                          f"re-export the model") from None
    try:
        forward, provider = backends.onnx_forward(exported.model)
    except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail...) for a damaged graph
        raise DamagedFile(f"{exported.model}: not a readable ONNX graph ({type(exc).__name__}: "
                          f"{(str(exc).splitlines() or [''])[0][:160]}); re-export the model") from None
    outputs = forward(torch.zeros(1, 3, plain.crop, plain.crop, dtype=torch.uint8)).shape[-1]
    if not isinstance(labels, list) or len(labels) != outputs:
        raise DamagedFile(f"{exported.labels}: {len(labels) if isinstance(labels, list) else 'no'} labels for a "
                          f"graph of {outputs} outputs; re-export the model (labels.json and model.onnx together)")
    method = read_json(exported.summary)["method"]
    return Classifier(method, labels, plain, forward), f"exported to {folder} (ONNX Runtime, {provider})"


def find_images(paths: list[Path]) -> list[Path]:
    """Files named, and every file under folders named (recursive, hidden files left out), in order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(f for f in path.rglob("*") if f.is_file()
                            and not any(part.startswith(".") for part in f.relative_to(path).parts))
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    return files


def classify(clf: Classifier, files: list[Path], batch_size: int = 32, tta: bool = False,
             workers: int = 1) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Check every file as the download stage does, then predict the readable ones.

    Returns (readable files, their probabilities (N, classes), skipped files with the reason).
    """
    readable, skipped = index.scan(Path("."), [(str(f), "") for f in files], workers)
    order = {str(f): i for i, f in enumerate(files)}
    readable = readable.sort_values("path", key=lambda p: p.map(order), kind="stable")[["path"]]
    readable = readable.reset_index(drop=True)
    if readable.empty:
        return readable, np.empty((0, len(clf.labels))), skipped
    proba, _ = predict_images(clf.forward, clf.preprocessing, Path("."), readable, clf.labels, batch_size, tta)
    return readable, proba, skipped


def check_top_k(top_k: int, classes: int) -> None:
    if not 1 <= top_k <= classes:
        raise UserError(f"--top-k: {top_k} is not between 1 and the model's {classes} classes")


def table(paths: pd.Series, proba: np.ndarray, labels: list[str], top_k: int = 1) -> pd.DataFrame:
    """path, label, probability (top-1), then label_2, probability_2 … up to top_k."""
    check_top_k(top_k, len(labels))
    order = np.argsort(-proba, axis=1, kind="stable")[:, :top_k]
    names = np.asarray(labels)
    out = pd.DataFrame({"path": paths.to_numpy()})
    for k in range(top_k):
        suffix = f"_{k + 1}" if k else ""
        out["label" + suffix] = names[order[:, k]]
        out["probability" + suffix] = np.take_along_axis(proba, order[:, k:k + 1], axis=1)[:, 0].round(6)
    return out
