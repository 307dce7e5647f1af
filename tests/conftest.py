"""Shared fixtures: synthetic image trees, the shared offline data, and temporary project copies."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

# The tests' commands share 2 cores between two workers: no DVC usage-report daemon after each `dvc` command (one
# process each, ~0.5 s of CPU, about 80 in a run, and this machine reaches no such server), and torch's idle OpenMP
# threads sleep instead of spinning on cores the other worker's stage is using.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PETS = SHARED / "data" / "oxford-iiit-pet"
CATS_DOGS = SHARED / "data" / "cats_and_dogs_filtered"
MOBILENET = SHARED / "weights" / "mobilenet_v2-imagenet-int8-dequantized.pth"


LONGEST = ("test_engines.py", "test_slurm.py", "test_engines_alone.py")  # minutes each; the other files seconds


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first: pytest-xdist (-n 2 --dist loadfile --no-loadscope-reorder) starts the first two at
    once, one per worker; the third follows the shorter, and the other files fill in around them."""
    items.sort(key=lambda item: LONGEST.index(item.path.name) if item.path.name in LONGEST else len(LONGEST))


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (for a test's own server)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def need(path: Path) -> Path:
    """Skip the test, saying what is missing, where the shared offline data is not beside the project."""
    if not path.exists():
        pytest.skip(f"needs {path} (the shared offline data described in ../shared/README.md)")
    return path


def make_tree(root: Path, classes: dict[str, int], size: int = 40) -> Path:
    """An ImageFolder tree <class>/<i>.jpg with a class-specific colour plus noise."""
    for c, (name, n) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng(1000 * c + i)
            colour = np.array([(60 + 90 * c) % 256, (200 - 70 * c) % 256, (30 * c + 100) % 256], np.int16)
            pixels = np.clip(colour + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i}.jpg", quality=90)
    return root


def write_params(path: Path, **sections: dict) -> Path:
    """A complete params.yaml (DVC needs every tracked key present): defaults overridden by `sections`."""
    from transferlab.settings.params import defaults

    full = defaults()
    for name, values in sections.items():
        full[name].update(values)
    path.write_text(yaml.safe_dump(full, sort_keys=False))
    return path


TINY_PARAMS = {  # data and checkpoint outside the project, as the shipped params.yaml has them (../shared)
    "data": {"dataset": "folder", "source": "../images", "split": "random", "val_fraction": 0.25,
             "test_fraction": 0.25, "seed": 1},
    "model": {"backbone": "resnet18", "weights": "none", "checkpoint": "../weights/resnet18.pth", "image_size": 32},
    "features": {"batch_size": 8, "num_workers": 0, "train_views": 1, "seed": 0},
    "head": {"C_grid": [0.1, 1.0], "max_iter": 500, "refit_on": "train"},
    "finetune": {"enabled": True, "unfreeze": 1, "lr": 1e-4, "epochs": 1, "batch_size": 8, "num_workers": 0,
                 "range_test_steps": 6, "augment": ["none", "strong"]},
    "visualize": {"enabled": True, "steps": 5, "image_size": 32, "adversarial_steps": 3, "adversarial_images": 1},
    "sweep": {"enabled": True, "backbones": ["resnet18"], "fractions": [0.5, 1.0], "seeds": [0]},
}
TIMM_CONVNEXT = {"backbone": "timm/convnext_atto", "checkpoint": "../weights/convnext_atto.pth"}  # beside images/


def random_checkpoint(path: Path, backbone: str = "resnet18", seed: int = 0) -> Path:
    """A seeded random-init state_dict of a model of any family, at its native size, as a user's checkpoint file:
    a torch file, or safetensors (as the Hugging Face Hub serves timm's) where the name ends .safetensors."""
    import torch
    from safetensors.torch import save_file

    from transferlab.models.backbones import load_classifier

    model, _ = load_classifier(resolved_backbone(backbone), seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    return path


def resolved_backbone(name: str, weights: str = "none", checkpoint: Path | str | None = None,
                      image_size: int | None = None):
    """The backbone these model.* values resolve to (models.backbones.Backbone)."""
    from transferlab.models.backbones import resolved
    from transferlab.settings.sections import Model

    return resolved(Model(name, weights, str(checkpoint) if checkpoint else None, image_size))


def data_settings(**values):
    """The data section at its defaults but for `values` (unvalidated: a dataset folder the test makes)."""
    from transferlab.settings.params import defaults
    from transferlab.settings.sections import Data

    return Data(**{**defaults()["data"], **values})


def finetune_settings(**values):
    """The finetune section at its defaults but for `values` (unvalidated)."""
    from transferlab.settings.params import defaults
    from transferlab.settings.sections import Finetune

    return Finetune(**{**defaults()["finetune"], **values})


def copy_project(parent: Path) -> Path:
    """A temporary copy of the project (git-tracked layout) with tiny params, and beside it (outside the project,
    as ../shared is) a tiny synthetic dataset `images/` and random-init checkpoints `weights/resnet18.pth` (torchvision,
    model.backbone) and `weights/convnext_atto.pth` (timm: TIMM_CONVNEXT, for the tests that run a timm backbone)."""
    dest = parent / "project"
    dest.mkdir()
    for name in ("Snakefile", "dvc.yaml", "pyproject.toml", "requirements.lock", ".gitignore", ".dvcignore", ".dvc",
                 "src", "workflow", "profiles"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "tmp", "cache"))
        else:
            shutil.copy2(src, dest / name)
    make_tree(parent / "images", {"ant": 8, "bee": 8, "cat": 8})
    random_checkpoint(parent / "weights" / "resnet18.pth")
    random_checkpoint(parent / "weights" / "convnext_atto.pth", "timm/convnext_atto")
    write_params(dest / "params.yaml", **TINY_PARAMS)
    return dest


def run_stages(project: Path, threads: int = 2, only: tuple[str, ...] = ()) -> None:
    """Every stage of the project (or `only` these) in table order, in this process, each as its script runs under
    an engine (its arguments, wildcards filled over the sweep grid; a switched-off stage leaves its 'skipped'
    record): a trained project in seconds where a test is about what the stages made, not about the engines."""
    import runpy

    from transferlab.pipeline.stages import TABLE, fillings, script
    from transferlab.settings import params as params_mod

    params = params_mod.load(project / "params.yaml")
    here, argv = Path.cwd(), sys.argv
    os.chdir(project)
    try:
        for stage in [name for name in TABLE if not only or name in only]:
            for filled in fillings(params, stage):
                sys.argv = [script(stage), *(a for w, v in filled.items() for a in (f"--{w}", v)),
                            "--threads", str(threads)]
                runpy.run_path(script(stage), run_name="__main__")
    finally:
        os.chdir(here)
        sys.argv = argv


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory) -> Path:
    """A tiny project trained by its stage scripts (random-init resnet18 on synthetic images; visualize and the
    sweep switched off), with its export; the engines' runs of the same stages are tests/test_engines.py's."""
    dest = copy_project(tmp_path_factory.mktemp("trained"))
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["visualize"]["enabled"] = params["sweep"]["enabled"] = False
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_stages(dest)
    return dest


def engine_env() -> dict[str, str]:
    """This process's environment with this interpreter's scripts (snakemake, dvc) first on PATH."""
    return {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command in the project copy with this interpreter's environment on PATH."""
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=engine_env())
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def snakemake_jobs(output: str) -> set[str]:
    """The rules of the jobs Snakemake ran or plans, from its output."""
    return set(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", output, re.M)) - {"all"}


def dvc_stages_ran(output: str) -> list[str]:
    """Stage names as DVC prints them (matrix stages as name@values)."""
    return re.findall(r"Running stage '([^']+)'", output)


def dvc_ran(output: str) -> set[str]:
    """The stages DVC ran (matrix stages by their name)."""
    return {name.split("@")[0] for name in dvc_stages_ran(output)}


def dvc_changed(project: Path) -> set[str]:
    """The stages DVC would run, after its check of the inputs outside the project (the always-changed inputs
    stage, run alone) has looked at them: `dvc status` names each stage with a changed dependency."""
    run(["dvc", "repro", "--single-item", "inputs"], project)
    status = run(["dvc", "status"], project).stdout
    return {m.split("@")[0] for m in re.findall(r"^(\S+):$", status, re.M)} - {"inputs"}


def set_param(project: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def git_dvc_init(project: Path) -> None:
    """A git repository of the project as cloned: the shipped .dvc/ makes it a DVC project, no `dvc init`."""
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        run(cmd, project)


def is_share(accuracy: float, images: int) -> bool:
    """Whether `accuracy` is a share of `images`: some number of them right, out of all."""
    right = accuracy * images
    return 0 <= right <= images and abs(right - round(right)) < 1e-9


def flip_bit(path: Path, offset: int) -> None:
    """Flip the lowest bit of the byte at `offset` (negative: from the end), the file's modification time kept."""
    times = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))


def stage_io(stage: str, data_dir: Path, out: Path | None = None, wildcards: dict | None = None, **given):
    """A stage's files for a direct library call: inputs beside data_dir (the project's data/), outputs in `out`
    (default: where the stage writes them in that project)."""
    from transferlab.pipeline.stages import io

    return io(stage, data_dir.parent, out, wildcards=wildcards, **given)


def mirror_image(data_dir: Path, split: str, row: int, copy_as: str | None = None) -> None:
    """The image at `row` of a split's list mirrored, the list as download and split would write it again: in
    place (its sha256 updated), or (`copy_as`, a file name) as a new image of its class at the list's end."""
    import hashlib

    import pandas as pd

    from transferlab.core.atomic import read_json
    from transferlab.core.project import data_root

    listed = data_dir / "splits" / f"{split}.csv"
    frame, root = pd.read_csv(listed), data_root(read_json(data_dir / "dataset.json"))
    line = frame.iloc[row].copy()
    source = root / line["path"]
    if copy_as:
        line["path"] = (Path(line["path"]).parent / copy_as).as_posix()
    Image.open(source).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / line["path"], quality=90)
    line["sha256"] = hashlib.sha256((root / line["path"]).read_bytes()).hexdigest()
    if copy_as:
        frame.loc[len(frame)] = line
    else:
        frame.iloc[row] = line
    frame.to_csv(listed, index=False)


def split_into(data: dict, data_dir: Path) -> dict:
    """The split stage's lists (and summary) of an indexed data_dir, with split params `data` (visualize off)."""
    from transferlab.settings.params import defaults
    from transferlab.settings.sections import Params

    params = Params.from_mapping(defaults()).updated(data=data, visualize={"enabled": False})
    return run_stage("split", params, stage_io("split", data_dir))


def run_stage(stage: str, params: dict, io) -> object:
    """A stage's adapter called directly, as `stages.execute` calls it (no switch, no checksum records)."""
    from transferlab.pipeline import stages

    return stages.runner(stage)(params, io)
