"""params.yaml as typed values: one frozen dataclass per section, built from the mapping `params.validate` has cast,
filled and checked against the schema (its fields are the schema's keys: tests/test_params.py holds them equal)."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

Augment = dict[str, Any]  # one augmentation setting: {scale: [low, high], flip, rotation, jitter}


@dataclass(frozen=True)
class Data:
    dataset: str
    source: str | None
    label: str | None
    split: str
    val_fraction: float
    test_fraction: float
    train_fraction: float
    seed: int


@dataclass(frozen=True)
class Model:
    backbone: str
    weights: str
    checkpoint: str | None
    image_size: int | None


@dataclass(frozen=True)
class Features:
    engine: str
    precision: str
    batch_size: int
    num_workers: int
    shards: int
    train_views: int
    seed: int


@dataclass(frozen=True)
class Head:
    C_grid: list[float]
    max_iter: int
    refit_on: str


@dataclass(frozen=True)
class Finetune:
    """The fine-tune's settings; `unfreeze`, `lr`, `head_lr`, `weight_decay` and `augment` may each be a list
    searched on validation (one candidate's settings hold one value of each: `tuning.setting`)."""
    enabled: bool
    unfreeze: int | str | list[int | str]
    train_bn: bool
    lr: float | str | list[float]
    head_lr: float | list[float]
    weight_decay: float | list[float]
    range_test_steps: int
    epochs: int
    batch_size: int
    devices: int
    schedule: str
    warmup_epochs: float
    step_size: int
    gamma: float
    patience: int
    prune: bool
    interpolate: list[float]
    num_workers: int
    seed: int
    augment: str | Augment | list[str | Augment]
    cache: str
    cache_max_gb: float


@dataclass(frozen=True)
class Evaluate:
    draws: int
    confidence: float
    seed: int
    tta: bool


@dataclass(frozen=True)
class Export:
    method: str


@dataclass(frozen=True)
class Visualize:
    enabled: bool
    target_class: str | None
    steps: int
    step_size: float
    tv_weight: float
    jitter: int
    image_size: int
    views: int
    seconds: float | None
    adversarial_from: str | None
    adversarial_to: str | None
    epsilon: float
    adversarial_steps: int
    adversarial_step_size: float
    adversarial_images: int
    seed: int


@dataclass(frozen=True)
class Sweep:
    enabled: bool
    backbones: list[str]
    checkpoints: dict[str, str]
    fractions: list[float]
    seeds: list[int]


@dataclass(frozen=True)
class Params:
    """Every section of params.yaml."""
    data: Data
    model: Model
    features: Features
    head: Head
    finetune: Finetune
    evaluate: Evaluate
    export: Export
    visualize: Visualize
    sweep: Sweep

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any]) -> Params:
        """The typed params of a validated mapping (every section and key present)."""
        return cls(**{name: section(**copy.deepcopy(mapping[name])) for name, section in SECTIONS.items()})

    def as_mapping(self) -> dict[str, Any]:
        """The nested mapping params.yaml holds (what the engines record, JSON and YAML write)."""
        return dataclasses.asdict(self)

    def at(self, dotted: str) -> Any:
        """The value of one dotted key: `params.at("finetune.enabled")`."""
        section, key = dotted.split(".")
        return getattr(getattr(self, section), key)

    def updated(self, **sections: dict[str, Any]) -> Params:
        """A copy with keys of the named sections changed: `params.updated(finetune={"epochs": 1})`."""
        return dataclasses.replace(self, **{name: dataclasses.replace(getattr(self, name), **values)
                                            for name, values in sections.items()})


SECTIONS: dict[str, type] = {"data": Data, "model": Model, "features": Features, "head": Head, "finetune": Finetune,
                             "evaluate": Evaluate, "export": Export, "visualize": Visualize, "sweep": Sweep}
