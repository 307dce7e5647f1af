import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from torchvision import models

from transferlab.core.errors import ParamsError
from transferlab.pipeline.stages import STAGE_PARAMS, params_for
from transferlab.settings import params
from transferlab.settings.sections import SECTIONS, Params


def valid(**over):
    raw = {"data": {"dataset": "folder", "source": "."}, "model": {"weights": "none"}}
    for dotted, value in over.items():
        section, key = dotted.split("__")
        raw.setdefault(section, {})[key] = value
    return raw


def test_defaults_fill_every_key():
    p = params.validate(valid())
    assert p.features.batch_size == 32
    assert p.head.C_grid == [0.01, 0.1, 1.0, 10.0]
    assert p.model.backbone == "mobilenet_v2"


def test_the_typed_sections_hold_the_schema_s_keys():
    """One frozen dataclass per section, its fields the schema's keys in the schema's order: a key added to the
    schema and not to its section (or the other way) fails here, not in a stage."""
    schema = params.schema()["properties"]
    assert [field.name for field in dataclasses.fields(Params)] == list(schema)
    for name, section in SECTIONS.items():
        assert [field.name for field in dataclasses.fields(section)] == list(schema[name]["properties"]), name


def test_params_are_frozen_and_change_only_as_a_copy():
    shipped = params.load(ROOT / "params.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        shipped.finetune.lr = 1e-3
    changed = shipped.updated(finetune={"epochs": 1}, sweep={"enabled": False})
    assert (changed.finetune.epochs, changed.sweep.enabled, changed.finetune.lr) == (1, False, shipped.finetune.lr)
    assert shipped.finetune.epochs == 4 and shipped.sweep.enabled
    assert changed.at("finetune.epochs") == 1
    assert params.select(changed, ["finetune.epochs"]) == {"finetune": {"epochs": 1}}
    again = params.validate(yaml.safe_load(yaml.safe_dump(shipped.as_mapping())), ROOT)
    assert again == shipped  # the mapping the engines record reads back to the same values


@pytest.mark.parametrize("text, expected", [("1e-5", 1e-5), ("3e-05", 3e-5), ("'.25e0'", 0.25)])
def test_numbers_written_as_strings_are_numbers(text, expected):
    # PyYAML reads 1e-5 and dvc's 3e-05 as strings: the loader must cast them.
    raw = yaml.safe_load(f"data:\n  dataset: folder\n  source: .\n  val_fraction: {text}\nmodel:\n  weights: none\n")
    assert isinstance(raw["data"]["val_fraction"], str)  # quoted or 1e-5 style
    p = params.validate(raw)
    assert p.data.val_fraction == pytest.approx(expected)
    assert isinstance(p.data.val_fraction, float)


def test_number_lists_and_integers_are_cast():
    p = params.validate(valid(head__C_grid=["1e-2", 1], features__batch_size="16"))
    assert p.head.C_grid == [0.01, 1]
    assert p.features.batch_size == 16 and isinstance(p.features.batch_size, int)


@pytest.mark.parametrize("over, key", [
    ({"features__batch_size": "many"}, "features.batch_size"),
    ({"data__val_fraction": 1.5}, "data.val_fraction"),
    ({"data__train_fraction": 0}, "data.train_fraction"),
    ({"data__dataset": "imagenet"}, "data.dataset"),
    ({"head__C_grid": []}, "head.C_grid"),
    ({"head__typo": 1}, "head.typo"),
    ({"model__backbone": "resnet7"}, "model.backbone"),
    ({"model__weights": "IMAGENET9K"}, "model.weights"),
    ({"data__source": "no/such/folder"}, "data.source"),
    ({"model__checkpoint": "missing.pth"}, "model.checkpoint"),
])
def test_errors_name_the_key(over, key):
    """As the Snakefile and the inputs stage check params: validated, then the backbones' names."""
    from transferlab.models import families

    with pytest.raises(ParamsError) as err:
        families.check_names(params.validate(valid(**over)))
    assert key in str(err.value)


def test_official_split_only_for_pets():
    with pytest.raises(ParamsError, match="data.split"):
        params.validate(valid(data__split="official"))


def test_unknown_section_named():
    with pytest.raises(ParamsError, match="sweeep"):
        params.validate({**valid(), "sweeep": {}})


def test_load_reports_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        params.load(tmp_path / "params.yaml")


def test_shipped_params_yaml_is_complete_and_valid():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    full = params.defaults()
    assert set(raw) == set(full)
    for section in full:
        assert set(raw[section]) == set(full[section]), section


def test_stage_params_select_exact_keys():
    p = params.validate(valid())
    sub = params_for(p, "download")
    assert sub == {"data": {"dataset": "folder", "source": ".", "label": None}}
    assert set(params_for(p, "extract")) == {"model", "features"}
    assert set(STAGE_PARAMS) >= {"download", "split", "extract", "train_head"}


def test_differences_from_defaults():
    p = params.validate(valid(features__batch_size=8))
    diff = params.differences(p)
    assert diff["features.batch_size"] == (32, 8)
    assert "head.max_iter" not in diff


SNAKEFILE_PARSE = """
import json, sys
from transferlab.pipeline import layout
from transferlab.settings import params
from transferlab.pipeline import stages
from conftest import ROOT
import yaml
from transferlab.models import families
config = params.validate(params.complete(yaml.safe_load((ROOT / "params.yaml").read_text())), ROOT)
families.check_names(config)
print(json.dumps({"torch": "torch" in sys.modules, "timm": "timm" in sys.modules, "points": len(layout.points(config))}))
"""


def test_params_validation_as_the_snakefile_parses_imports_no_torch_once_names_are_known(tmp_path):
    """The Snakefile validates params at every parse (every no-op run, every cluster job): the backbone family's
    model and weights names are remembered per version of the family's package, so only the first parse imports
    torch; the shipped torchvision backbone never loads timm."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    tests = Path(__file__).parent

    def parse():
        out = subprocess.run([sys.executable, "-c", SNAKEFILE_PARSE], cwd=tests, env=env, capture_output=True,
                             text=True, check=True)
        return json.loads(out.stdout)

    assert parse()["torch"] is True  # the first time: names read from torchvision, then remembered
    [remembered] = (tmp_path / "transferlab").glob("torchvision-*-names.json")
    again = parse()
    assert again["torch"] is False and again["timm"] is False and again["points"] > 0
    names = json.loads(remembered.read_text())
    assert sorted(names) == sorted(models.list_models(module=models))
    assert names["resnet50"] == ["IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"]
    remembered.write_text("{damaged")
    assert parse()["torch"] is True and json.loads(remembered.read_text()) == names  # a damaged file is rebuilt


def test_parameter_reference_is_generated_from_the_schema():
    from transferlab.settings.params import load, reference

    expected = reference(load(ROOT / "params.yaml"))
    assert (ROOT / "docs" / "parameters.md").read_text() == expected, \
        "docs/parameters.md is stale: python -m transferlab.settings.params > docs/parameters.md"
    for key in ("data.source", "finetune.lr", "sweep.fractions"):  # each key in its section's table
        section, name = key.split(".")
        assert f"| `{name}` |" in expected.split(f"## `{section}`")[1].split("## ")[0]
