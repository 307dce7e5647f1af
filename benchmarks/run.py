"""transferlab benchmark: feature extraction against the machine's compute ceiling, and what caching saves.

    python benchmarks/run.py                  # every row (about 75 min on 2 cores; row 8 alone ~40)
    python benchmarks/run.py --rows 1 2 3     # some rows (row 9: the same numbers on other CPU kernels, ~3 min;
                                              # row 10: the learning-rate search against one rate, ~6 min;
                                              # row 11: stage start-up and the exp-run cost, before/after, ~25 min;
                                              # row 12: a timm ViT-S: extraction and cached fine-tune, ~6 min;
                                              # row 13: extraction in 1 job against 2 shard jobs, ~6 min;
                                              # row 14: the shipped fine-tune search against one setting, ~9 min)

All rows come from the same run and print as one Markdown table (also merged into --record). Needs the
shared offline data (../shared): Oxford-IIIT Pet photos and the ImageNet MobileNetV2 state_dict. ResNet-50 runs
with random weights (speed does not depend on them).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PETS = SHARED / "data" / "oxford-iiit-pet"
MOBILENET = SHARED / "weights" / "mobilenet_v2-imagenet-int8-dequantized.pth"
sys.path.insert(0, str(ROOT / "src"))

from transferlab.core.atomic import read_arrays  # noqa: E402
from transferlab.core.project import SPLITS  # noqa: E402
from transferlab.data import index  # noqa: E402
from transferlab.data.images import load_tensor  # noqa: E402
from transferlab.inference import backends, batches  # noqa: E402
from transferlab.inference.transforms import evaluation  # noqa: E402
from transferlab.models import backbones  # noqa: E402
from transferlab.pipeline import layout, results, stages  # noqa: E402
from transferlab.pipeline.runner import set_threads  # noqa: E402
from transferlab.probe import head  # noqa: E402
from transferlab.settings.params import validate  # noqa: E402
from transferlab.settings.sections import Head, Model  # noqa: E402

warnings.filterwarnings("ignore")
THREADS = os.cpu_count() or 1
MODELS = {
    "resnet50": {"backbone": "resnet50", "weights": "none", "checkpoint": None, "image_size": None},
    "mobilenet_v2": {"backbone": "mobilenet_v2", "weights": "IMAGENET1K_V1", "checkpoint": str(MOBILENET),
                     "image_size": None},
}
VIT = {"backbone": "timm/vit_small_patch16_224", "weights": "none", "checkpoint": None, "image_size": None}
ROWS: list[dict] = []


def row(group: str, what: str, value: float, unit: str, note: str = "") -> float:
    ROWS.append({"row": group, "what": what, "value": round(value, 4), "unit": unit, "note": note})
    print(f"  {group:<3} {what:<58} {value:>10.4g} {unit:<9} {note}", flush=True)
    return value


def rate(fn: Callable[[], object], items: int, repeat: int) -> float:
    """Items per second of fn, best of `repeat` timed calls after one warm-up."""
    fn()
    best = min(_timed(fn) for _ in range(repeat))
    return items / best


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- 1. the ceiling ---------------------------------------------------------------------------------------------

def matmul_ceiling(n: int = 2048) -> dict[str, float]:
    """GFLOP/s of an n×n matrix product in torch (fp32, bf16), numpy and ONNX Runtime, all cores."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    flop = 2 * n ** 3 / 1e9
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = {"torch fp32": rate(lambda: a @ b, 1, 5) * flop}
    an, bn = a.numpy(), b.numpy()
    out["numpy fp32"] = rate(lambda: an @ bn, 1, 5) * flop
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    out["onnxruntime fp32"] = rate(lambda: session.run(None, {"a": an, "b": bn}), 1, 5) * flop
    ab, bb = a.bfloat16(), b.bfloat16()
    out["torch bf16"] = rate(lambda: ab @ bb, 1, 5) * flop
    return out


def gflop_per_image(name: str) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model, _, _ = backbones.load_feature_extractor(backbones.resolved(Model(**MODELS[name])))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.zeros(1, 3, 224, 224))
    return counter.get_total_flops() / 1e9


def forward_rates(name: str, batch: int = 32, repeat: int = 2) -> dict[str, float]:
    """Forward-only img/s of each engine/precision on a ready uint8 batch (no decoding)."""
    backbone = backbones.resolved(Model(**MODELS.get(name, VIT)))
    extractor, _, _ = backbones.load_feature_extractor(backbone)
    plain = backbone.preprocessing
    model = backbones.Normalized(extractor, plain.mean, plain.std, scale=255)
    x = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8)
    out: dict[str, float] = {}
    n = 2 if name == "resnet50" else 6
    with tempfile.TemporaryDirectory() as tmp:
        for engine, precision in (("torch", "float32"), ("torch", "bfloat16"), ("onnxruntime", "float32")):
            if precision == "bfloat16" and not backends.bf16_supported(torch.device("cpu")):
                continue
            for streams in (1, THREADS):
                with batches.torch_threads(THREADS // streams):
                    forward, _ = backends.build(model, engine, precision, torch.device("cpu"), 224,
                                               Path(tmp) / "m.onnx", threads=THREADS // streams)
                    out[f"{engine} {precision}, {streams} stream(s) x {THREADS // streams} thread(s)"] = rate(
                        lambda forward=forward, streams=streams: _parallel(forward, x, streams, n), batch * n, repeat)
    return out


def _parallel(forward: backends.Forward, x: torch.Tensor, streams: int, batches: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(lambda _: forward(x), range(batches)))


# -- 2. decoding ------------------------------------------------------------------------------------------------

def decode_rates(paths: list[Path]) -> dict[str, float]:
    """Decode + preprocess img/s on one core: the notebooks' PIL path and ours."""
    plain = backbones.resolved(Model(**MODELS["mobilenet_v2"])).preprocessing
    ours, notebook = evaluation(plain, normalize=False), notebook_transform("mobilenet_v2")
    with batches.torch_threads(1):
        return {"PIL + weights.transforms() (notebooks)": rate(lambda: [notebook(Image.open(p).convert("RGB"))
                                                                         for p in paths], len(paths), 2),
                "torchvision.io / PIL draft + uint8 v2 resize (ours)": rate(
                    lambda: [ours(load_tensor(p, plain.resize)) for p in paths], len(paths), 2)}


# -- 3. the extract stage end to end ------------------------------------------------------------------------------

def dataset(work: Path, n_per_class: int | None) -> Path:
    """data/ for the shared Pets photos (all, or n per class in the train split), as the download+split stages make it."""
    files = stages.io("split", work / f"project-{n_per_class or 'all'}")
    if not files.input.dataset.exists():
        params = validate({"data": {"dataset": "oxford_pets", "source": str(PETS)}, "visualize": {"enabled": False}})
        index.build(params.data, layout.files_in("download", files.input.dataset.parent), workers=THREADS)
        stages.runner("split")(params, files)
        if n_per_class:
            for name in SPLITS:
                frame = pd.read_csv(getattr(files.output, name))
                frame = frame.groupby("label").head(n_per_class if name == "train" else 1)
                frame.to_csv(getattr(files.output, name), index=False)
    return files.input.dataset.parent


def extract_rate(name: str, data_dir: Path, work: Path, engine: str, precision: str, tag: str = "") -> float:
    """img/s of the extract stage (all splits, decode included)."""
    params = validate({"data": {"dataset": "oxford_pets", "source": str(PETS)}, "model": MODELS.get(name, VIT),
                       "features": {"engine": engine, "precision": precision}})
    meta = stages.runner("extract")(params, stages.io("extract", data_dir.parent,
                                          work / f"feat-{name}-{engine}-{precision}{tag}"))
    images = sum(s["images"] for s in meta["splits"].values())
    seconds = sum(s["seconds"] for s in meta["splits"].values())
    return images / seconds


def bf16_effect(work: Path) -> dict[str, float]:
    """What bfloat16 changes on real weights: feature cosine to float32, and the probe's test accuracy with each."""
    params = validate({"data": {"dataset": "oxford_pets", "source": str(PETS)}})
    out = {}
    cached = {}
    for precision, engine in (("float32", "auto"), ("bfloat16", "torch")):
        folder = work / f"feat-mobilenet_v2-{engine}-{precision}"
        cached[precision] = {s: read_arrays(getattr(layout.files_in("extract", folder), s)) for s in SPLITS}
        model, _ = head.fit(cached[precision]["train"], cached[precision]["val"], params.head)
        test = cached[precision]["test"]
        proba = head.predict_proba(model, test["features"], len(test["classes"]))
        out[f"probe test accuracy, {precision} features"] = float((proba.argmax(1) == test["labels"]).mean())
    a, b = cached["float32"]["test"]["features"], cached["bfloat16"]["test"]["features"]
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    out["feature cosine bf16 vs fp32 (mean)"] = float(cosine.mean())
    out["feature cosine bf16 vs fp32 (min)"] = float(cosine.min())
    return out


# -- 9. the same numbers on other CPU kernels ----------------------------------------------------------------------

KERNELS = {"torch": {}, "torch, oneDNN capped at AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
           "torch, oneDNN capped at SSE4.1": {"ONEDNN_MAX_CPU_ISA": "SSE41"}, "onnxruntime": {}}


def kernel_effect(data_dir: Path, work: Path) -> dict[str, float]:
    """The shipped extraction (float32) on other kernels, each in its own process: torch with oneDNN capped at
    older instruction sets (ONEDNN_MAX_CPU_ISA, as on an older CPU) and ONNX Runtime. How far the features move,
    and what the head's choice of C — by the earlier rule (validation accuracy, then log-loss) and by today's
    (log-loss) — and its test accuracy do."""
    params = validate({"data": {"dataset": "oxford_pets", "source": str(PETS)}})
    cached, out = {}, {}
    for i, (kernels, env) in enumerate(KERNELS.items()):
        engine = "auto" if kernels == "onnxruntime" else "torch"
        code = (f"import sys; sys.argv = ['run.py']; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import run; "
                f"from pathlib import Path; run.set_threads({THREADS}); run.extract_rate('mobilenet_v2', "
                f"Path({str(data_dir)!r}), Path({str(work)!r}), {engine!r}, 'float32', '-kernels{i}')")
        subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, check=True, capture_output=True)
        folder = work / f"feat-mobilenet_v2-{engine}-float32-kernels{i}"
        cached[kernels] = {s: read_arrays(getattr(layout.files_in("extract", folder), s)) for s in SPLITS}
    reference = np.concatenate([cached["torch"][s]["features"] for s in SPLITS])
    for kernels, split_features in cached.items():
        test = split_features["test"]
        for rule in ("log-loss (today)", "accuracy (earlier)"):
            search = head.fit(split_features["train"], split_features["val"], params.head)[1]
            if rule.startswith("accuracy"):
                C = float(search.sort_values(["val_accuracy", "val_log_loss"], ascending=[False, True]).iloc[0]["C"])
            else:
                C = head.chosen_C(search)
            model = head.make_head(C, params.head.max_iter).fit(split_features["train"]["features"],
                                                                      split_features["train"]["labels"])
            accuracy = float((head.predict_proba(model, test["features"], len(test["classes"])).argmax(1)
                              == test["labels"]).mean())
            out[f"{kernels}: C by {rule}, probe test accuracy"] = (C, accuracy)
        if kernels != "torch":
            other = np.concatenate([split_features[s]["features"] for s in SPLITS])
            out[f"{kernels}: features bit-identical to torch's"] = float((other == reference).mean())
            out[f"{kernels}: largest feature difference / largest feature, ppm"] = float(
                np.abs(other - reference).max() / np.abs(reference).max() * 1e6)
    return out


# -- 4. the notebook baseline -------------------------------------------------------------------------------------

def notebook_transform(name: str) -> Callable:
    """The lesson notebooks' preprocessing: the torchvision weights' own PIL transform (the DEFAULT weights'
    where the benchmark runs random ones)."""
    import torchvision

    weights = MODELS[name]["weights"]
    return torchvision.models.get_model_weights(name)[weights if weights != "none" else "DEFAULT"].transforms()


class NotebookImages(torch.utils.data.Dataset):
    """What the lesson notebooks build: PIL open + convert + the weights' transforms, per item."""

    def __init__(self, root: Path, frame: pd.DataFrame, transform: Callable):
        self.paths, self.transform = [root / p for p in frame["path"]], transform
        classes = sorted(frame["label"].unique())
        self.labels = [classes.index(c) for c in frame["label"]]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.open(self.paths[i]).convert("RGB")), self.labels[i]


def notebook_rate(name: str, data_dir: Path) -> float:
    """img/s of the notebook way: DataLoader(batch_size=32) defaults, NCHW eager model under no_grad."""
    root = Path(json.loads((stages.io("extract", data_dir.parent).input.dataset).read_text())["root"])
    frames = [pd.read_csv(getattr(stages.io("extract", data_dir.parent).input.splits, s)) for s in SPLITS]
    model, _, _ = backbones.load_feature_extractor(backbones.resolved(Model(**MODELS[name])))
    notebook = notebook_transform(name)
    start, n = time.perf_counter(), 0
    with torch.no_grad():
        for frame in frames:
            for x, _ in torch.utils.data.DataLoader(NotebookImages(root, frame, notebook), batch_size=32):
                model(x)
                n += len(x)
    return n / (time.perf_counter() - start)


# -- 5. head on cached features vs frozen-backbone training ---------------------------------------------------------

def head_vs_notebook(data_dir: Path, feat_dir: Path, epochs: int) -> dict[str, float]:
    """Seconds and test accuracy: our LogisticRegression on cached features vs E epochs of a Linear head on a frozen
    MobileNetV2 recomputed every epoch (Adam 1e-3, batch 32, the notebooks' data pipeline)."""
    cached = {s: read_arrays(getattr(layout.files_in("extract", feat_dir), s)) for s in SPLITS}
    params = validate({"data": {"dataset": "oxford_pets", "source": str(PETS)}})
    start = time.perf_counter()
    model, _ = head.fit(cached["train"], cached["val"], params.head)
    fit_s = time.perf_counter() - start
    n_classes = len(cached["train"]["classes"])
    ours_acc = float((head.predict_proba(model, cached["test"]["features"], n_classes).argmax(1)
                      == cached["test"]["labels"]).mean())

    root = Path(json.loads((stages.io("extract", data_dir.parent).input.dataset).read_text())["root"])
    frames = {s: pd.read_csv(getattr(stages.io("extract", data_dir.parent).input.splits, s)) for s in SPLITS}
    backbone, dim, _ = backbones.load_feature_extractor(backbones.resolved(Model(**MODELS["mobilenet_v2"])))
    notebook = notebook_transform("mobilenet_v2")
    torch.manual_seed(0)
    linear = torch.nn.Linear(dim, n_classes)
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-3)
    train = torch.utils.data.DataLoader(NotebookImages(root, frames["train"], notebook), batch_size=32, shuffle=True)
    start = time.perf_counter()
    for _ in range(epochs):
        for x, y in train:
            with torch.no_grad():
                f = backbone(x)
            loss = torch.nn.functional.cross_entropy(linear(f), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    train_s = time.perf_counter() - start
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(NotebookImages(root, frames["test"], notebook), batch_size=32):
            correct += int((linear(backbone(x)).argmax(1) == y).sum())
    return {"fit_s": fit_s, "ours_acc": ours_acc, "train_s": train_s, "notebook_acc": correct / len(frames["test"])}


# -- 6. re-run costs ------------------------------------------------------------------------------------------------

BIN = Path(sys.executable).parent
ENV = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "bench",
       "GIT_COMMITTER_EMAIL": "b@b", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # dvc.yaml: `python`
SNAKEMAKE, DVC = str(BIN / "snakemake"), str(BIN / "dvc")


def sh(project: Path, *cmd: str, own_library: bool = False) -> float:
    """Seconds a command takes in the project (its output goes to <project>.log, outside the project: `dvc exp
    run` restores the workspace's untracked files); `own_library`: the stages import the copy's src/, not the
    installed transferlab."""
    start = time.perf_counter()
    with open(project.with_suffix(".log"), "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        env = {**ENV, "PYTHONPATH": str(project / "src")} if own_library else ENV
        subprocess.run(cmd, cwd=project, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    return time.perf_counter() - start


def git_copy(work: Path, name: str, rev: str | None = None, **changes: dict) -> Path:
    """A git repository of the project as cloned (this working tree, or the commit `rev`; shipped params with
    `changes` per section, ../shared made absolute), with one commit, ready for both workflow engines."""
    copy = work / name
    skipped = {".git", ".venv", "data", "results", "logs", ".snakemake", "benchmarks", "records"}

    def ignore(folder: str, names: list[str]) -> list[str]:  # the project's outputs, not src/transferlab/data
        top = Path(folder) == ROOT
        return [n for n in names if (top and n in skipped) or n in ("__pycache__", "cache", "tmp")
                or n.endswith(".egg-info")]
    shutil.rmtree(copy, ignore_errors=True)
    copy.with_suffix(".log").unlink(missing_ok=True)
    if rev:
        copy.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(copy)], input=archive, check=True)
    else:
        shutil.copytree(ROOT, copy, ignore=ignore)
    params = yaml.safe_load((copy / "params.yaml").read_text().replace("../shared", str(SHARED)))
    for section, values in changes.items():
        params[section].update(values)
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (("git", "init", "-q"), ("git", "add", "-A"), ("git", "commit", "-qm", "bench")):
        sh(copy, *cmd)
    return copy


def rerun_costs(work: Path) -> dict[str, float]:
    """Full snakemake run (sweep off), no-op snakemake and dvc repro, and dvc exp run -S finetune.lr in a git copy."""
    copy = git_copy(work, "project", sweep={"enabled": False})  # the learning curve has its own command (README)
    out = {"snakemake full": sh(copy, SNAKEMAKE, "--cores", str(THREADS))}
    out["snakemake no-op"] = sh(copy, SNAKEMAKE, "--cores", str(THREADS))
    # Record what Snakemake made (both engines run the same stages on the same files), let DVC write its
    # "skipped" sweep outputs and the report, then time a DVC run with nothing to do.
    sh(copy, DVC, "commit", "-f", "download", "split", "extract", "train_head", "evaluate_probe", "frozen_cache",
       "finetune", "evaluate_finetune", "visualize")
    sh(copy, DVC, "repro")
    out["dvc repro no-op"] = sh(copy, DVC, "repro")
    sh(copy, "git", "add", "dvc.lock")
    sh(copy, "git", "commit", "-qm", "lock")
    out["dvc exp run -S finetune.lr=2e-5"] = sh(copy, DVC, "exp", "run", "-S", "finetune.lr=2e-5")
    return out


# -- 8. the frozen-prefix cache ---------------------------------------------------------------------------------------

def _finetune_rates(project: Path) -> tuple[float, float, float]:
    """(training img/s, mean epoch seconds, test accuracy) of the project's main fine-tune."""
    summary = json.loads((project / layout.FILES["finetune"]["summary"]).read_text())
    epochs = pd.read_csv(project / layout.FILES["finetune"]["history"])["seconds"].mean()
    accuracy = json.loads((project / layout.FILES["evaluate_finetune"]["metrics"]).read_text())["accuracy"]
    return summary["train_images_per_s"], float(epochs), accuracy


def cache_costs(work: Path) -> dict[str, float]:
    """The default `snakemake --cores N` (main pipeline, sweep, report) with the frozen-prefix cache and with
    `finetune.cache: never`, one after the other; then a changed finetune.lr under Snakemake, and under DVC
    `dvc repro` and `dvc exp run -S finetune.lr=3e-5` in a third copy."""
    auto = git_copy(work, "cache-auto")
    out = {"snakemake full, cache auto": sh(auto, SNAKEMAKE, "--cores", str(THREADS))}
    shipped = {"cache": _finetune_rates(auto)}
    params = yaml.safe_load((auto / "params.yaml").read_text())
    params["finetune"]["lr"] = 3e-5
    (auto / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out["snakemake after finetune.lr=3e-5, cache auto"] = sh(auto, SNAKEMAKE, "--cores", str(THREADS))
    never = git_copy(work, "cache-never", finetune={"cache": "never"})
    out["snakemake full, cache never"] = sh(never, SNAKEMAKE, "--cores", str(THREADS))
    shipped["on the fly"] = _finetune_rates(never)
    for name, (rate, epoch, accuracy) in shipped.items():
        out[f"fine-tune from {name}: img/s"], out[f"fine-tune from {name}: s/epoch"] = rate, epoch
        out[f"fine-tune from {name}: test accuracy"] = accuracy
    dvc = git_copy(work, "dvc")
    out["dvc repro full, cache auto"] = sh(dvc, DVC, "repro")
    sh(dvc, "git", "add", "dvc.lock")
    sh(dvc, "git", "commit", "-qm", "lock")
    out["dvc exp run -S finetune.lr=3e-5"] = sh(dvc, DVC, "exp", "run", "-S", "finetune.lr=3e-5")
    ran = set(re.findall(r"Running stage '([^'@]+)", dvc.with_suffix(".log").read_text().split("$ ")[-1]))
    out["stages the exp run ran"] = ", ".join(sorted(ran))
    return out


# -- 12. a timm ViT: extraction and the cached fine-tune against its forward-only rate ------------------------------

def vit_finetune_rates(data_dir: Path, work: Path) -> dict[str, float]:
    """Fine-tune img/s of timm ViT-S (random weights, the last 2 of 12 blocks) from the frozen-prefix cache (the
    first 10 blocks' token sequences, computed once) and on the fly; and the cache's own img/s."""
    base = {"data": {"dataset": "oxford_pets", "source": str(PETS)}, "model": VIT,
            "finetune": {"epochs": 1, "unfreeze": 2, "lr": 1e-5, "batch_size": 32, "range_test_steps": 0}}
    feat = work / "feat-vit"
    stages.runner("extract")(validate(base), stages.io("extract", data_dir.parent, feat))
    train, val = (read_arrays(feat / f"{s}.npz") for s in ("train", "val"))
    probe, _ = head.fit(train, val, Head(C_grid=[1.0], max_iter=300, refit_on="train"))
    head.save(probe, work / "vit-probe.npz", [str(c) for c in train["classes"]])
    out = {}
    for cache in ("auto", "never"):
        params = validate({**base, "finetune": {**base["finetune"], "cache": cache}})
        folder = work / f"vit-frozen-{cache}"
        meta = stages.runner("frozen_cache")(params, stages.io("frozen_cache", data_dir.parent, folder))
        if meta["cached"]:
            out["frozen-prefix cache (once): img/s"] = sum(meta["parts"][p]["views"] for p in meta["parts"]) / meta["seconds"]
        summary = stages.runner("finetune")(params, stages.io("finetune", data_dir.parent, work / f"vit-ft-{cache}",
                                                 probe=work / "vit-probe.npz", frozen=folder / "meta.json"))
        out[f"fine-tune {'from the cache' if cache == 'auto' else 'on the fly'}: img/s"] = summary["train_images_per_s"]
    return out


# -- 10. the fine-tune's learning-rate search ------------------------------------------------------------------------

def _set_params(project: Path, section: str, **values: object) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def search_costs(work: Path, repeat: int = 2) -> dict[str, object]:
    """The finetune stage (its script, start-up included) at one rate and with the shipped rate grid (one
    augmentation, one depth: row 14 times the whole search), alternated `repeat` times from the same frozen-prefix
    cache; the fastest of each."""
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())["finetune"]["lr"]
    copy = git_copy(work, "search", sweep={"enabled": False}, visualize={"enabled": False})
    _set_params(copy, "finetune", lr=1e-5, augment="strong", unfreeze=2, interpolate=[1.0])  # the rates alone
    sh(copy, SNAKEMAKE, "--cores", str(THREADS), layout.FILES["finetune"]["summary"])
    times: dict[str, list[float]] = {"single": [], "grid": []}
    for _ in range(repeat):
        for name, lr in (("single", 1e-5), ("grid", shipped)):
            _set_params(copy, "finetune", lr=lr)
            times[name].append(sh(copy, sys.executable, "workflow/scripts/finetune.py"))
    search = pd.read_csv(copy / layout.FILES["finetune"]["search"])
    scores = search.groupby("lr")["val_loss"].min()
    chosen = float(search.loc[search["chosen"], "lr"].iloc[0])
    return {"single": min(times["single"]), "grid": min(times["grid"]), "rates": len(scores), "chosen": chosen,
            "lowest": float(scores.idxmin())}


ONE_SETTING = {"augment": "strong", "unfreeze": 2, "lr": 1e-4, "interpolate": [1.0]}  # row 14's baseline


def fine_tune_search_costs(work: Path) -> dict[str, object]:
    """The fine-tune's whole cost, frozen_cache and finetune stages (their scripts, start-up included), at one
    setting (ONE_SETTING: one augmentation, one depth, one rate, no interpolation) and with the shipped search,
    alternated from the same probe; with what the search chose and how many candidates the pruner stopped."""
    copy = git_copy(work, "fine-tune-search", sweep={"enabled": False}, visualize={"enabled": False})
    sh(copy, SNAKEMAKE, "--cores", str(THREADS), layout.FILES["train_head"]["model"])
    shipped = yaml.safe_load((copy / "params.yaml").read_text())["finetune"]
    times: dict[str, float] = {}
    for name, values in (("one setting", ONE_SETTING), ("shipped search", shipped)):
        _set_params(copy, "finetune", **values)
        times[name] = sum(sh(copy, sys.executable, f"workflow/scripts/{stage}.py") for stage in ("frozen_cache", "finetune"))
        times[f"{name}: frozen_cache"] = json.loads((copy / layout.FILES["frozen_cache"]["meta"]).read_text())["seconds"]
    summary = json.loads((copy / layout.FILES["finetune"]["summary"]).read_text())
    return {**times, **{k: summary[k] for k in ("candidates", "pruned", "augment", "unfreeze", "lr", "alpha")}}


# -- 11. stage start-up, before and after ----------------------------------------------------------------------------

BASELINE = "8439834"  # the last commit before the start-up work (lazy imports)
FLOORS = {"interpreter": "pass", "interpreter + torch": "import torch",
          "interpreter + torch + torchvision": "import torch, torchvision"}
SMALL_WORK = {"data": {"train_fraction": 0.3}, "finetune": {"lr": 1e-5, "epochs": 1},
              "visualize": {"steps": 5, "adversarial_steps": 3}}  # little work per stage: start-up shows


def floors(repeat: int = 3) -> dict[str, float]:
    """Seconds of `python -c ...` for the interpreter alone and with torch (and torchvision) imported; fastest."""
    out = {}
    for what, code in FLOORS.items():
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.perf_counter() - start)
        out[what] = min(times)
    return out


def stage_overheads(project: Path) -> dict[str, list[tuple[float, float]]]:
    """Per stage, over its jobs: (the job's wall time from Snakemake's benchmark file, its own 'done in' from its
    log). Their difference is the start-up: interpreter, imports, params and bookkeeping around the work (an
    import a stage makes late, inside its work, counts in its 'done in')."""
    out: dict[str, list[tuple[float, float]]] = {}
    for tsv in sorted((project / "logs/benchmarks").rglob("*.tsv")):
        log = (project / "logs" / tsv.relative_to(project / "logs/benchmarks")).with_suffix(".log")
        found = re.search(r"\[(\w+)\] done in ([\d.]+) s", log.read_text()) if log.exists() else None
        if found:
            wall = float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])
            out.setdefault(found.group(1), []).append((wall, float(found.group(2))))
    return out


def startup_costs(work: Path, before: str, after: str) -> dict[str, dict]:
    """Each version (the commits `before` and `after`): `snakemake --cores 1` on the shipped data with little work per
    stage, each stage's start-up overhead; then, on the shipped params, `dvc repro` and `dvc exp run -S
    finetune.lr=3e-5` one after the other."""
    out: dict[str, dict] = {}
    for version, tree in (("before", before), ("after", after)):
        small = git_copy(work, f"startup-{version}", tree, **SMALL_WORK)
        full_snakemake = sh(small, SNAKEMAKE, "--cores", "1", own_library=True)
        shipped = git_copy(work, f"exp-{version}", tree)
        full = sh(shipped, DVC, "repro", own_library=True)
        sh(shipped, "git", "add", "dvc.lock")
        sh(shipped, "git", "commit", "-qm", "lock")
        exp = sh(shipped, DVC, "exp", "run", "-S", "finetune.lr=3e-5", own_library=True)
        target = sh(shipped, DVC, "exp", "run", "-S", "finetune.lr=2e-5", "evaluate_finetune", own_library=True)
        out[version] = {"overheads": stage_overheads(small), "small run": full_snakemake, "dvc repro": full,
                        "dvc exp run": exp, "dvc exp run evaluate_finetune": target}
    return out


# -- 7. memory over the full Oxford-IIIT Pet size -------------------------------------------------------------------

def memory_run(work: Path, n: int) -> tuple[float, float]:
    """Peak RSS (MB) and seconds of the extract stage script over n synthetic JPEGs sized like the Pets photos."""
    project = work / "memory"
    sizes = [Image.open(p).size for p in sorted((PETS / "images").glob("*.jpg"))]
    rng = np.random.default_rng(0)
    classes = [f"class{c:02d}" for c in range(37)]
    for i in range(n):
        w, h = sizes[rng.integers(len(sizes))]
        folder = project / "images" / classes[i % 37]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}.jpg"
        if not path.exists():
            base = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
            Image.fromarray(base).resize((w, h), Image.BILINEAR).save(path, quality=85)
    settings = {"data": {"dataset": "folder", "source": "images"}, "model": MODELS["mobilenet_v2"]}
    (project / "params.yaml").write_text(yaml.safe_dump(validate(settings, project).as_mapping(), sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for stage in ("download", "split"):
        subprocess.run([sys.executable, str(ROOT / "workflow" / "scripts" / f"{stage}.py")], cwd=project, env=env,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # A small wrapper process runs the stage, so its children's peak RSS is the stage's alone.
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, "
               "stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    start = time.perf_counter()
    script = str(ROOT / "workflow" / "scripts" / "extract.py")
    done = subprocess.run([sys.executable, "-c", wrapper, sys.executable, script],
                          cwd=project, env=env, check=True, capture_output=True, text=True)
    return int(done.stdout.split()[-1]) / 1024, time.perf_counter() - start


# -- 13. extraction spread over shard jobs (Snakemake) -------------------------------------------------------------

def shard_costs(work: Path) -> dict[str, float]:
    """`snakemake --cores N results/features/meta.json` on the shipped params after the split (run first, untimed):
    one extract job with N threads; features.shards: 2 with one thread each, side by side; and 2 shards of N
    threads each, in turn. Wall seconds of the extraction, each shard's images/s, and whether the features are
    the one job's byte for byte."""
    out: dict[str, float] = {}
    made: dict[str, Path] = {}
    runs = {"1 job": ({}, []),
            "2 shards side by side, 1 thread each": ({"shards": 2}, ["--set-threads", "extract_shard=1"]),
            f"2 shards in turn, {THREADS} threads each": ({"shards": 2}, [])}
    for what, (changes, extra) in runs.items():
        copy = git_copy(work, "shards-" + str(len(made)), sweep={"enabled": False}, features=changes)
        sh(copy, SNAKEMAKE, "--cores", str(THREADS), layout.FILES["split"]["summary"])
        out[f"{what}: wall"] = sh(copy, SNAKEMAKE, layout.FILES["extract"]["meta"], "--cores", str(THREADS), *extra)
        meta = json.loads((copy / layout.FILES["extract"]["meta"]).read_text())
        for i, shard in enumerate(meta.get("shards", [])):
            images = sum(s["images"] for s in shard["splits"].values())
            out[f"{what}: shard {i} img/s"] = images / sum(s["seconds"] for s in shard["splits"].values())
        if "shards" not in meta:
            out[f"{what}: img/s"] = sum(s["images"] for s in meta["splits"].values()) / sum(
                s["seconds"] for s in meta["splits"].values())
        made[what] = copy
    first = next(iter(made.values()))
    for what, copy in list(made.items())[1:]:
        out[f"{what}: features identical to 1 job"] = float(all(
            (copy / layout.FILES["extract"][split]).read_bytes() == (first / layout.FILES["extract"][split]).read_bytes()
            for split in SPLITS))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=list(range(1, 15)))
    parser.add_argument("--before", default=BASELINE, help=f"row 11's baseline commit (default {BASELINE})")
    parser.add_argument("--after", default="HEAD", help="row 11's commit to compare (default HEAD)")
    parser.add_argument("--resnet-images", type=int, default=4, help="ResNet-50 train photos per class (row 3/4)")
    parser.add_argument("--epochs", type=int, default=10, help="notebook frozen-backbone epochs (row 5)")
    parser.add_argument("--memory-images", type=int, default=7349, help="synthetic photos for row 7")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--record", type=Path, default=ROOT / results.BENCHMARK,
                        help="the record the rows measured replace theirs in (default records/benchmark.json; "
                             "then python -m transferlab.pipeline.results readme)")
    args = parser.parse_args()
    for path in (PETS, MOBILENET):
        if not path.exists():
            sys.exit(f"needs {path} (the shared offline data, ../shared/README.md)")
    set_threads(THREADS)
    work = args.work or Path(tempfile.mkdtemp(prefix="transferlab-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"transferlab benchmark: {THREADS} threads, torch {torch.__version__}, work in {work}", flush=True)
    try:
        measure(args, work)
    finally:  # what was measured is kept, also where a later row fails
        save(args.record)


def save(path: Path) -> None:
    """This run's rows into the record (results.merge_benchmark), and printed as one Markdown table."""
    run = {"machine": {"cpu": results.cpu(), "threads": THREADS, "torch": torch.__version__},
           "date": time.strftime("%Y-%m-%d"), "rows": ROWS}
    record = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(results.merge_benchmark(record, run), indent=1, ensure_ascii=False) + "\n")
    print("\n| row | what | value | unit | note |\n|---|---|---:|---|---|")
    for r in ROWS:
        print(f"| {r['row']} | {r['what']} | {r['value']:g} | {r['unit']} | {r['note']} |")


def measure(args: argparse.Namespace, work: Path) -> None:
    """Every row asked for, in order, each appended to ROWS as it is measured."""
    best_fp32: dict[str, float] = {}
    ceiling = 0.0
    if 1 in args.rows:
        mm = matmul_ceiling()
        for what, gflops in mm.items():
            row("1", f"matmul 2048³ {what}", gflops, "GFLOP/s")
        ceiling = max(v for k, v in mm.items() if "fp32" in k)
        for name in MODELS:
            gflop = row("1", f"{name} GFLOP/img (flop_counter, 224 px)", gflop_per_image(name), "GFLOP")
            row("1", f"{name} ceiling = best fp32 matmul / GFLOP", ceiling / gflop, "img/s")
            for what, value in forward_rates(name).items():
                row("1", f"{name} forward only: {what}", value, "img/s")
                if "float32" in what:
                    best_fp32[name] = max(best_fp32.get(name, 0.0), value)
    photos = sorted((PETS / "images").glob("*.jpg"))
    if 2 in args.rows:
        for what, value in decode_rates(photos[:300]).items():
            row("2", f"decode+preprocess 1 core: {what}", value, "img/s", "Pets photos")
    small = dataset(work, args.resnet_images)
    full = dataset(work, None)
    ours: dict[str, float] = {}
    if 3 in args.rows:
        for name, data_dir in (("mobilenet_v2", full), ("resnet50", small)):
            for engine, precision in (("auto", "float32"), ("torch", "bfloat16")):
                value = extract_rate(name, data_dir, work, engine, precision)
                ours[f"{name} {precision}"] = value
                note = ""
                if precision == "float32" and name in best_fp32:
                    note = f"{value / best_fp32[name]:.0%} of best fp32 forward-only"
                    if name == "resnet50" and ceiling:
                        gflop = gflop_per_image(name)
                        note += f"; {value * gflop / ceiling:.0%} of the fp32 ceiling"
                row("3", f"extract stage end to end: {name} {precision}", value, "img/s", note)
        for what, value in bf16_effect(work).items():
            row("3", f"mobilenet_v2 (real weights) {what}", value, "", "shared Pets test split")
    if 4 in args.rows:
        value = notebook_rate("resnet50", small)
        row("4", "notebook baseline resnet50 (float32, NCHW eager, PIL, DataLoader defaults)", value, "img/s")
        for precision in ("float32", "bfloat16"):
            if f"resnet50 {precision}" in ours:
                row("4", f"speed-up of our extract stage, {precision}, over the notebook",
                    ours[f"resnet50 {precision}"] / value, "x")
    if 5 in args.rows:
        feat_dir = work / "feat-mobilenet_v2-auto-float32"
        if not layout.files_in("extract", feat_dir).test.exists():
            extract_rate("mobilenet_v2", full, work, "auto", "float32")
        extract_s = json.loads((layout.files_in("extract", feat_dir).meta).read_text())["splits"]
        extract_s = sum(s["seconds"] for s in extract_s.values())
        result = head_vs_notebook(full, feat_dir, args.epochs)
        row("5", "head on cached features: fit (C grid on val)", result["fit_s"], "s",
            f"test acc {result['ours_acc']:.3f}")
        row("5", "extraction once (all splits) + fit", extract_s + result["fit_s"], "s")
        row("5", f"notebook: frozen MobileNetV2 + Linear, {args.epochs} epochs", result["train_s"], "s",
            f"test acc {result['notebook_acc']:.3f}")
        row("5", "speed-up of the cached head (fit only)", result["train_s"] / result["fit_s"], "x")
        row("5", "speed-up including the one extraction", result["train_s"] / (extract_s + result["fit_s"]), "x")
    if 6 in args.rows:
        costs = rerun_costs(work)
        for what, seconds in costs.items():
            row("6", what, seconds, "s")
        row("6", "exp run after a change of finetune.lr / full run",
            costs["dvc exp run -S finetune.lr=2e-5"] / costs["snakemake full"], "ratio")
    if 8 in args.rows:
        costs = cache_costs(work)
        ran = costs.pop("stages the exp run ran")
        for what, value in costs.items():
            unit = "img/s" if what.endswith("img/s") else "" if "accuracy" in what else "s"
            row("8", what.removesuffix(": img/s"), value, unit, f"ran: {ran}" if what.startswith("dvc exp") else "")
        row("8", "fine-tune speed-up from the cache", costs["fine-tune from cache: img/s"]
            / costs["fine-tune from on the fly: img/s"], "x")
        row("8", "dvc exp run -S finetune.lr / dvc repro", costs["dvc exp run -S finetune.lr=3e-5"]
            / costs["dvc repro full, cache auto"], "ratio")
        row("8", "snakemake after finetune.lr / snakemake full (cache auto)",
            costs["snakemake after finetune.lr=3e-5, cache auto"] / costs["snakemake full, cache auto"], "ratio")
        row("8", "snakemake full: cache auto / cache never", costs["snakemake full, cache auto"]
            / costs["snakemake full, cache never"], "ratio")
    if 9 in args.rows:
        for what, value in kernel_effect(full, work).items():
            if isinstance(value, tuple):
                row("9", what, value[1], "", f"C = {value[0]:g}")
            else:
                row("9", what, value, "ppm" if what.endswith("ppm") else "", "mobilenet_v2, shared Pets")
    if 10 in args.rows:
        cost = search_costs(work)
        row("10", "finetune stage, one rate (1e-5)", cost["single"], "s", "script incl. start-up; fastest of 2")
        row("10", f"finetune stage, shipped grid ({cost['rates']} rates)", cost["grid"], "s",
            f"chose lr {cost['chosen']:g}; lowest validation loss at {cost['lowest']:g}")
        row("10", "search / one rate", cost["grid"] / cost["single"], "ratio")
    if 11 in args.rows:
        floor = floors()
        for what, seconds in floor.items():
            row("11", f"floor: {what}", seconds, "s", "python -c, fastest of 3")
        costs = startup_costs(work, args.before, args.after)
        for stage in costs["after"]["overheads"]:
            (wall_b, done_b), (wall_a, done_a) = (np.mean(costs[v]["overheads"].get(stage, [(np.nan, np.nan)]), 0)
                                                  for v in ("before", "after"))
            row("11", f"{stage}: start-up (wall − done in), after", wall_a - done_a, "s",
                f"before {wall_b - done_b:.1f} s; wall {wall_b:.1f} → {wall_a:.1f} s; after − torch floor "
                f"{wall_a - done_a - floor['interpreter + torch']:+.1f} s")
        for version in ("before", "after"):
            total = sum(w - d for v in costs[version]["overheads"].values() for w, d in v)
            row("11", f"{version}: overhead summed over the small run's jobs", total, "s",
                f"of {costs[version]['small run']:.0f} s snakemake --cores 1")
            c = costs[version]
            row("11", f"{version}: dvc exp run -S finetune.lr=3e-5 / dvc repro (shipped params)",
                c["dvc exp run"] / c["dvc repro"], "ratio", f"{c['dvc exp run']:.0f} of {c['dvc repro']:.0f} s")
            row("11", f"{version}: dvc exp run -S finetune.lr=2e-5 evaluate_finetune / dvc repro",
                c["dvc exp run evaluate_finetune"] / c["dvc repro"], "ratio",
                f"{c['dvc exp run evaluate_finetune']:.0f} s: the fine-tune and its test scores only")
    if 12 in args.rows:
        forward = forward_rates("vit_small", repeat=1)
        best = max(v for k, v in forward.items() if "float32" in k)
        for what, value in forward.items():
            row("12", f"timm vit_small_patch16_224 forward only: {what}", value, "img/s", "random weights, 224 px")
        value = extract_rate("vit_small", small, work, "auto", "float32")
        row("12", "timm vit_small_patch16_224 extract stage end to end, float32", value, "img/s",
            f"{value / best:.0%} of best fp32 forward-only")
        for what, value in vit_finetune_rates(small, work).items():
            row("12", f"timm vit_small_patch16_224 {what}", value, "img/s",
                f"{value / best:.0%} of best fp32 forward-only (unfreeze 2 of 12 blocks)")
    if 13 in args.rows:
        costs = shard_costs(work)
        for what, value in costs.items():
            unit = "s" if what.endswith("wall") else "img/s" if what.endswith("img/s") else "yes=1"
            row("13", what, value, unit, "shipped params, sweep off; Snakemake")
        for what in list(costs):
            if what.endswith("wall") and not what.startswith("1 job"):
                row("13", f"{what.removesuffix(': wall')} / 1 job", costs[what] / costs["1 job: wall"], "ratio")
    if 14 in args.rows:
        cost = fine_tune_search_costs(work)
        one = (f"augmentation {ONE_SETTING['augment']}, {ONE_SETTING['unfreeze']} blocks, lr {ONE_SETTING['lr']:g}, "
               "no interpolation")
        for name in ("one setting", "shipped search"):
            row("14", f"frozen_cache + finetune, {name}", cost[name], "s",
                (f"{one}; " if name == "one setting" else "") +
                f"frozen blocks {cost[f'{name}: frozen_cache']:.0f} s; shipped params, scripts with start-up")
        row("14", "shipped search / one setting", cost["shipped search"] / cost["one setting"], "ratio",
            f"{cost['candidates']} candidates, {cost['pruned']} stopped by the pruner; chose {cost['augment']}, "
            f"{cost['unfreeze']} blocks, lr {cost['lr']:g}, α {cost['alpha']:g}")
    if 7 in args.rows:
        rss, seconds = memory_run(work, args.memory_images)
        row("7", f"extract stage peak RSS, {args.memory_images} synthetic Pets-sized JPEGs", rss, "MB",
            f"{args.memory_images / seconds:.0f} img/s incl. start-up")


if __name__ == "__main__":
    main()
