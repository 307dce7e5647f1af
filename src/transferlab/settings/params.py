"""params.yaml: load, cast numbers written as strings, fill defaults, validate against the JSON schema, and return
the typed sections (settings/sections.py)."""
from __future__ import annotations

import copy
import json
import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from transferlab.core.errors import ParamsError
from transferlab.core.project import resolve
from transferlab.settings import grid
from transferlab.settings.sections import Params

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)

# The environment variable holding the params Snakemake planned its run with (set by the Snakefile, as JSON): its
# jobs compute with these, the values it records, whatever happens to params.yaml while the run goes on.
PLANNED = "TRANSFERLAB_PARAMS"


def schema() -> dict[str, Any]:
    """The JSON schema of params.yaml, shipped with the package."""
    text = resources.files("transferlab").joinpath("schema/params.schema.json").read_text()
    return json.loads(text)


def is_url(source: str) -> bool:
    return bool(_URL.match(source))


def _cast_numbers(value: Any, sub: dict[str, Any]) -> Any:
    """Turn strings such as '1e-05' into numbers where the schema expects a number."""
    types = sub.get("type", [])
    types = [types] if isinstance(types, str) else types
    for branch in sub.get("anyOf", []):  # the branch of the value's shape (a setting, or a list of them)
        if (isinstance(value, dict) and "properties" in branch) or (isinstance(value, list) and "items" in branch):
            return _cast_numbers(value, branch)
    if isinstance(value, dict) and "properties" in sub:
        return {k: _cast_numbers(v, sub["properties"].get(k, {})) for k, v in value.items()}
    if isinstance(value, list) and "items" in sub:
        return [_cast_numbers(v, sub["items"]) for v in value]
    if isinstance(value, str) and ("number" in types or "integer" in types):
        try:
            number = float(value.strip())
        except ValueError:
            return value
        return int(number) if "integer" in types and number.is_integer() else number
    if isinstance(value, float) and "integer" in types and "number" not in types and value.is_integer():
        return int(value)
    return value


def _fill_defaults(value: dict[str, Any], sub: dict[str, Any]) -> dict[str, Any]:
    out = dict(value)
    for key, prop in sub.get("properties", {}).items():
        if key not in out and "default" in prop:
            out[key] = copy.deepcopy(prop["default"])
        elif key not in out and prop.get("type") == "object":
            out[key] = _fill_defaults({}, prop)
        elif isinstance(out.get(key), dict):
            out[key] = _fill_defaults(out[key], prop)
    return out


def _key(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return ".".join(filter(None, [path, extra[0] if extra else ""]))
    return path or "<top level>"


def validate(raw: dict[str, Any] | None, base_dir: Path | str = ".") -> Params:
    """Cast, fill defaults and validate a params mapping into typed sections; raise ParamsError naming the first
    bad key."""
    full = schema()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError("params: the file must hold a mapping of sections (data, model, ...)")
    params = normalized(raw)
    errors = sorted(jsonschema.Draft202012Validator(full).iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        message = error.message
        if error.validator == "pattern":  # a word where a number, a list of numbers or that word may stand
            message = f"{error.instance!r} is not a number, a list of numbers or {error.validator_value.strip('^$')}"
        if error.validator == "anyOf":  # say what may stand there, and for a setting what is wrong with it
            allowed = _allowed(error.schema).replace(" \\| ", " | ").replace("`", "")
            branches = error.schema["anyOf"]
            deeper = next((e for e in error.context if isinstance(error.instance, dict)
                           and "properties" in branches[e.relative_schema_path[0]]), None)
            message = f"{error.instance!r} is not {allowed}" + (f" ({deeper.message})" if deeper else "")
        raise ParamsError(f"params: {_key(error)}: {message}")
    typed = Params.from_mapping(params)
    _check_semantics(typed, Path(base_dir))
    return typed


def _not_finite(value: Any, prefix: str = "") -> str | None:
    """The dotted key of the first NaN or infinite number (they pass every schema bound), else None."""
    if isinstance(value, dict):
        return next((k for key, v in value.items() if (k := _not_finite(v, f"{prefix}{key}."))), None)
    if isinstance(value, list):
        return next((k for v in value if (k := _not_finite(v, prefix))), None)
    return prefix[:-1] if isinstance(value, float) and not math.isfinite(value) else None


def _check_semantics(params: Params, base_dir: Path) -> None:
    data, finetune, sweep = params.data, params.finetune, params.sweep
    bad = _not_finite(params.as_mapping())
    if bad:
        raise ParamsError(f"params: {bad}: NaN and infinity are not allowed; give a finite number")
    if data.label is not None and data.dataset != "oxford_pets":
        raise ParamsError(f"params: data.label: {data.label} only applies to data.dataset: oxford_pets; "
                          f"{data.dataset} takes its classes from folder names: set data.label: null")
    if finetune.lr == "auto" and grid.depths(finetune) == [0]:
        raise ParamsError("params: finetune.lr: auto tests the backbone's rate, but finetune.unfreeze: 0 trains the "
                          "head only; give finetune.lr a number or unfreeze blocks")
    if finetune.lr == "auto" and finetune.range_test_steps < 20:
        raise ParamsError(f"params: finetune.range_test_steps: {finetune.range_test_steps} is too few for "
                          "finetune.lr: auto to find the rate where the loss turns; give at least 20")
    if finetune.devices > 1 and finetune.train_bn:
        raise ParamsError(f"params: finetune.devices: {finetune.devices} with finetune.train_bn: true "
                          f"would keep BatchNorm statistics per process, unlike one process; set train_bn: false")
    for setting in grid.augments(finetune).values():
        low, high = setting["scale"]
        if low > high:
            raise ParamsError(f"params: finetune.augment.scale: [{low}, {high}] must be [smallest, largest] area "
                              f"fraction, e.g. [{high}, {low}]")
    if 1 not in finetune.interpolate:
        raise ParamsError(f"params: finetune.interpolate: {finetune.interpolate} must hold 1 (the fine-tune itself); "
                          "[1] turns the interpolation off")
    if data.val_fraction + data.test_fraction >= 1:
        raise ParamsError("params: data.val_fraction + data.test_fraction must be below 1 (training needs images)")
    if data.split == "official" and data.dataset != "oxford_pets":
        raise ParamsError("params: data.split: 'official' exists only for data.dataset: oxford_pets")
    if data.dataset == "folder" and not data.source:
        raise ParamsError("params: data.source: the 'folder' dataset needs a local folder, archive or URL")
    if data.source and not is_url(data.source) and not resolve(data.source, base_dir).exists():
        raise ParamsError(f"params: data.source: no such file or folder: {data.source}")
    checkpoint = params.model.checkpoint
    if checkpoint and not resolve(checkpoint, base_dir).is_file():
        raise ParamsError(f"params: model.checkpoint: no such file: {checkpoint}")
    unknown = sorted(set(sweep.checkpoints) - set(sweep.backbones))
    if unknown:
        raise ParamsError(f"params: sweep.checkpoints: {', '.join(unknown)} is not in sweep.backbones")
    for backbone, path in sweep.checkpoints.items():
        if not resolve(path, base_dir).is_file():
            raise ParamsError(f"params: sweep.checkpoints: {backbone}: no such file: {path}")


def complete(raw: Any, name: str = "params.yaml") -> dict[str, Any]:
    """The parameter file's mapping, refused when empty or missing a whole section (a file half-written by
    `dvc exp run`, say): defaults stand in for single keys, never for everything a section holds."""
    if not raw:
        raise ParamsError(f"params: {name} is empty; it needs the sections {', '.join(schema()['properties'])}")
    if isinstance(raw, dict):
        missing = [section for section in schema()["properties"] if section not in raw]
        if missing:
            raise ParamsError(f"params: {name} has no section {', '.join(missing)} (a whole section missing; "
                              f"copy it from the shipped params.yaml)")
    return raw


def same_as_file(config: dict[str, Any], path: Path | str = "params.yaml") -> None:
    """Refuse a Snakemake config that differs from the file the stage scripts read (`--config`, `--configfile`):
    the jobs planned and the results computed would silently disagree."""
    on_disk = load(path).as_mapping()
    changed = sorted(set(differences(config, on_disk)) | set(differences(on_disk, config)))
    if changed:
        raise ParamsError(f"params: {changed[0]}: set on the command line (--config/--configfile), but the stage "
                          f"scripts read {path}; edit {path} instead (or use dvc exp run -S)")


class _UniqueKeys(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (it would silently keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ParamsError(f"params: {key}: given twice (line {key_node.start_mark.line + 1}); keep one")
            seen.add(key)
        return super().construct_mapping(node, deep)


def load(path: Path | str = "params.yaml") -> Params:
    """Read and validate params.yaml into typed sections; relative paths inside it are checked against its folder."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeys)
    except FileNotFoundError:
        raise ParamsError(f"params: file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"params: {path} is not valid YAML: {exc}") from None
    return validate(complete(raw, str(path)), path.parent)


def planned(path: Path | str = "params.yaml") -> Params | None:
    """The params the engine planned this run with (PLANNED), None outside a Snakemake run."""
    text = os.environ.get(PLANNED)
    return None if text is None else validate(json.loads(text), Path(path).parent)


def changed_since(used: Params, keys: list[str], path: Path | str = "params.yaml") -> list[str]:
    """The keys among `keys` (dotted) whose values in the file now differ from `used`; all of them where the
    file no longer loads."""
    try:
        now = load(path)
    except ParamsError:
        return list(keys)
    before, after = select(used, keys), select(now, keys)
    return sorted(set(differences(before, after)) | set(differences(after, before)))


def select(params: Params, keys: list[str]) -> dict[str, Any]:
    """The nested subset of params named by dotted keys (a whole section or single keys), as a mapping."""
    out: dict[str, Any] = {}
    mapping = params.as_mapping()
    for dotted in keys:
        *parents, last = dotted.split(".")
        src, dst = mapping, out
        for part in parents:
            src, dst = src[part], dst.setdefault(part, {})
        dst[last] = copy.deepcopy(src[last])
    return out


def sweep_point(params: Params, backbone: str, seed: int | None = None) -> Params:
    """The params of a sweep point: its backbone (model.weights and checkpoint where it is model.backbone, else
    its sweep.checkpoints file or its DEFAULT weights) and, where given, its fine-tune seed."""
    if backbone != params.model.backbone:
        params = params.updated(model={"backbone": backbone, "weights": "DEFAULT",
                                       "checkpoint": params.sweep.checkpoints.get(backbone)})
    return params if seed is None else params.updated(finetune={"seed": seed})


def normalized(raw: dict[str, Any]) -> dict[str, Any]:
    """A params mapping as validation sees it (numbers cast, defaults filled), not checked: the params of a run
    read back for comparison, whose paths need not exist here."""
    return _fill_defaults(_cast_numbers(raw, schema()), schema())


def flat(mapping: dict[str, Any]) -> dict[str, Any]:
    """Dotted key → value of a params mapping (its sections' keys)."""
    return {f"{section}.{key}": value for section, values in mapping.items() for key, value in values.items()}


def defaults() -> dict[str, Any]:
    """Every parameter at its schema default."""
    return _fill_defaults({}, schema())


def differences(params: Params | dict[str, Any], reference: dict[str, Any] | None = None) -> dict[str, tuple[Any, Any]]:
    """Dotted key → (reference value, value) for every parameter that differs from the reference (the
    defaults unless given)."""
    out: dict[str, tuple[Any, Any]] = {}
    params = params.as_mapping() if isinstance(params, Params) else params

    def walk(value: Any, default: Any, prefix: str) -> None:
        if isinstance(value, dict) and isinstance(default, dict):
            for key in value:
                walk(value[key], default.get(key), f"{prefix}{key}.")
        elif value != default:
            out[prefix[:-1]] = (default, value)

    walk(params, defaults() if reference is None else reference, "")
    return out


def _cell(value: Any) -> str:
    return "`" + json.dumps(value) + "`" if value is not None else "`null`"


def _allowed(sub: dict[str, Any]) -> str:
    """A key's types as docs/parameters.md shows them: "number or list of numbers or `auto`"."""
    if "anyOf" in sub:
        return " or ".join(_allowed(branch) for branch in sub["anyOf"])
    if "enum" in sub or "const" in sub:
        return " \\| ".join(_cell(v) for v in sub.get("enum", [sub.get("const")]))
    if "properties" in sub:
        return "{" + ", ".join(sub["properties"]) + "}"
    if sub.get("type") == "array" and "anyOf" in sub.get("items", {}):
        return f"list of ({_allowed(sub['items'])})"
    types = [sub["type"]] if isinstance(sub.get("type"), str) else sub.get("type", [])
    named = {"array": f"list of {sub.get('items', {}).get('type', 'value')}s",
             "string": f"`{sub['pattern'].strip('^$')}`" if "pattern" in sub else "string"}
    return " or ".join(named.get(t, t) for t in types)


def reference(shipped: Params) -> str:
    """docs/parameters.md: every key of the schema with its allowed values, default, the value params.yaml ships
    where it differs, and its description (`python -m transferlab.settings.params > docs/parameters.md`)."""
    lines = ["# Parameters", "",
             "Generated from `src/transferlab/schema/params.schema.json` and `params.yaml` by "
             "`python -m transferlab.settings.params > docs/parameters.md` (a test checks it is current). "
             "`params.yaml` is the only place a knob is set; *shipped* shows where it differs from the default, "
             "and the comment on that line of `params.yaml` says why.", ""]

    def walk(node: dict[str, Any], values: dict[str, Any], prefix: str) -> None:
        for key, sub in node["properties"].items():
            name = prefix + key
            if sub.get("type") == "object" and "properties" in sub:
                lines.extend(["", f"## `{name}`", "", sub.get("description", ""), "",
                              "| key | allowed | default | shipped | meaning |", "|---|---|---|---|---|"])
                walk(sub, values.get(key, {}), name + ".")
                continue
            allowed = " \\| ".join(_cell(v) for v in sub["enum"]) if "enum" in sub else _allowed(sub)
            value = values.get(key, sub.get("default"))
            differs = _cell(value) if value != sub.get("default") else ""
            meaning = sub.get("description", "").replace("|", "\\|")
            lines.append(f"| `{key}` | {allowed} | {_cell(sub.get('default'))} | {differs} | {meaning} |")

    walk(schema(), shipped.as_mapping(), "")
    return "\n".join(line for i, line in enumerate(lines) if line or lines[i - 1]) + "\n"


if __name__ == "__main__":
    print(reference(load("params.yaml")), end="")
