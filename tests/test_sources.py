"""Inputs versioned by content (sources.py), outputs checked against their records (checks.py), paths from a DVC
experiment's temporary copy: the library side, without either engine."""
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import make_tree, random_checkpoint

from transferlab.core.errors import DamagedFile
from transferlab.core.project import resolve, workspace
from transferlab.pipeline import checks, layout, sources, stages
from transferlab.settings.params import defaults
from transferlab.settings.sections import Params


def manifest_files(project: Path) -> SimpleNamespace:
    return layout.files("inputs", project)


def params_for(source: str, checkpoint: str | None) -> Params:
    return Params.from_mapping(defaults()).updated(data={"source": source}, model={"checkpoint": checkpoint})


def test_manifests_follow_content_and_keep_their_time_when_it_does_not_change(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    make_tree(tmp_path / "images", {"ant": 3, "bee": 3})
    random_checkpoint(tmp_path / "weights.pth")
    p, out = params_for("../images", "../weights.pth"), manifest_files(project)
    assert sources.refresh(p, out, project) == ["dataset", "checkpoint", "sweep_checkpoints"]
    first = {name: (getattr(out, name).read_text(), getattr(out, name).stat().st_mtime_ns) for name in vars(out)}
    assert '"ant/ant_0.jpg"' in first["dataset"][0] and '"weights.pth"' in first["checkpoint"][0]

    hashed = []
    real = sources.file_digest
    monkeypatch.setattr(sources, "file_digest", lambda path: hashed.append(path) or real(path))
    os.utime(tmp_path / "images/bee/bee_0.jpg")  # touched, same content: hashed again, manifest unchanged
    assert sources.refresh(p, out, project) == [] and [h.resolve() for h in hashed] == [tmp_path / "images/bee/bee_0.jpg"]
    monkeypatch.undo()
    assert {name: (getattr(out, name).read_text(), getattr(out, name).stat().st_mtime_ns) for name in vars(out)} == first

    shutil.copy(tmp_path / "images/ant/ant_0.jpg", tmp_path / "images/ant/ant_9.jpg")
    assert sources.refresh(p, out, project) == ["dataset"]
    (tmp_path / "images/ant/ant_9.jpg").write_bytes((tmp_path / "images/bee/bee_1.jpg").read_bytes())
    assert sources.refresh(p, out, project) == ["dataset"]
    (tmp_path / "images/ant/ant_9.jpg").unlink()
    assert sources.refresh(p, out, project) == ["dataset"]
    assert out.dataset.read_text() == first["dataset"][0]  # back to the content it started from
    random_checkpoint(tmp_path / "weights.pth", seed=1)
    assert sources.refresh(p, out, project) == ["checkpoint"]
    # the sweep's other backbones' checkpoints: a manifest of their own, read by the sweep's stages only
    p = p.updated(sweep=dict(backbones=["resnet18", "timm/convnext_atto"], checkpoints={"timm/convnext_atto": "../other.pth"}))
    random_checkpoint(tmp_path / "other.pth", seed=2)
    assert sources.refresh(p, out, project) == ["sweep_checkpoints"]
    random_checkpoint(tmp_path / "other.pth", seed=3)
    assert sources.refresh(p, out, project) == ["sweep_checkpoints"]
    assert '"other.pth"' in out.sweep_checkpoints.read_text() and sources.refresh(p, out, project) == []


def test_a_same_size_same_time_replacement_is_seen_once_the_record_is_removed(tmp_path):
    """Case 4 of the bad-input issue, as docs/reproducibility.md says it: the quick check (size and time) misses
    an image replaced by one of the same size with the old time put back; removing data/inputs/.seen.json, the
    documented cure, hashes every file again and sees it."""
    project = tmp_path / "project"
    project.mkdir()
    make_tree(tmp_path / "images", {"ant": 3, "bee": 3})
    p, out = params_for("../images", None), manifest_files(project)
    sources.refresh(p, out, project)
    photo, other = tmp_path / "images/ant/ant_0.jpg", tmp_path / "images/bee/bee_2.jpg"
    before = photo.stat()
    replacement = bytearray(other.read_bytes()[: before.st_size].ljust(before.st_size, b"\0"))
    photo.write_bytes(bytes(replacement))
    os.utime(photo, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert sources.refresh(p, out, project) == []  # not seen: the rule DVC and rsync follow too
    (out.dataset.parent / ".seen.json").unlink()
    assert sources.refresh(p, out, project) == ["dataset"]


def test_a_path_leaving_the_project_resolves_from_a_dvc_experiment_copy(tmp_path):
    project = tmp_path / "project"
    temp = project / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    temp.mkdir(parents=True)
    assert workspace(temp) == project.resolve() and workspace(project) == project
    assert resolve("../shared/x", temp) == project.resolve() / "../shared/x"
    assert resolve("images", temp) == temp / "images"  # inside the project: the copy's own
    assert resolve("../shared/x", project) == project / "../shared/x"
    assert resolve("/abs/x", temp) == Path("/abs/x")


def stage_files(project: Path, stage: str) -> stages.StageIO:
    return stages.io(stage, project)


def test_records_catch_truncated_edited_and_missing_files_naming_the_stage(tmp_path):
    written = stage_files(tmp_path, "train_head")
    for path in (written.output.model, written.output.search, written.output.summary):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(100))
    checks.record(written)
    reader = stage_files(tmp_path, "evaluate_probe")
    stages.verify_inputs("evaluate_probe", reader)  # as written: nothing to say
    model = written.output.model
    original = model.read_bytes()
    for damage, problem in ((original[:50], "50 bytes, but 100 were written"),
                            (bytes([original[0] ^ 1]) + original[1:], "damaged or edited")):
        model.write_bytes(damage)
        with pytest.raises(DamagedFile, match=f"{model}: {problem}.*re-run the train_head stage that writes it"):
            stages.verify_inputs("evaluate_probe", reader)
    model.unlink()
    with pytest.raises(DamagedFile, match="missing"):
        stages.verify_inputs("evaluate_probe", reader)


def test_a_skipped_stage_and_a_stage_run_outside_the_engines_check_nothing(tmp_path):
    finetune = stage_files(tmp_path, "finetune")
    stages.skip("finetune", finetune, "finetune.enabled: false")
    stages.verify_inputs("evaluate_finetune", stage_files(tmp_path, "evaluate_finetune"))
    assert {p for p, _ in stages.records_read("sweep_aggregate", stage_files(tmp_path, "sweep_aggregate"))} == set()
