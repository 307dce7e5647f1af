"""finetune.augment's and finetune.unfreeze's values as the search uses them: named augmentation settings and
depths (no pandas, no torch: params' checks read them where the Snakefile loads the params)."""
from __future__ import annotations

from typing import Any

from transferlab.settings.sections import Finetune

# finetune.augment's named settings, from none (the plain preprocessing) to the classic photo augmentation.
AUGMENT_PRESETS = {
    "none": {"scale": [1.0, 1.0], "flip": False, "rotation": 0, "jitter": 0.0},
    "light": {"scale": [0.8, 1.0], "flip": False, "rotation": 0, "jitter": 0.1},
    "strong": {"scale": [0.6, 1.0], "flip": True, "rotation": 10, "jitter": 0.1},
}


def is_plain(augment: dict) -> bool:
    """Whether an augmentation setting is the plain preprocessing (every epoch's view is the evaluation view)."""
    return (tuple(augment["scale"]) == (1.0, 1.0) and not augment["flip"] and not augment["rotation"]
            and not augment["jitter"])


def augments(finetune: Finetune) -> dict[str, dict[str, Any]]:
    """finetune.augment's settings by name, in the order given: a preset by its name, an explicit setting as
    "custom" (or "custom 1", "custom 2", … where several are listed)."""
    given = finetune.augment if isinstance(finetune.augment, list) else [finetune.augment]
    explicit = sum(isinstance(a, dict) for a in given)
    named, count = {}, 0
    for setting in given:
        if isinstance(setting, str):
            named[setting] = AUGMENT_PRESETS[setting]
        else:
            count += 1
            named["custom" if explicit == 1 else f"custom {count}"] = setting
    return named


def depths(finetune: Finetune) -> list[int | str]:
    """finetune.unfreeze's values: a list as given, one value as a list of one."""
    return list(finetune.unfreeze) if isinstance(finetune.unfreeze, list) else [finetune.unfreeze]


def deepest(finetune: Finetune) -> int | str:
    """The most blocks any candidate trains ("all" where one trains the whole backbone): the frozen-prefix cache
    is cut there and serves every shallower candidate."""
    found = depths(finetune)
    return "all" if "all" in found else max(found)


def blocks(unfreeze: int | str) -> str:
    """A depth in words: "1 block", "2 blocks", "all blocks"."""
    return "all blocks" if unfreeze == "all" else f"{unfreeze} block" + ("s" if unfreeze != 1 else "")


def depth(unfreeze: int | str) -> float:
    """A number of trained blocks to order by ("all" last)."""
    return float("inf") if unfreeze == "all" else float(unfreeze)
