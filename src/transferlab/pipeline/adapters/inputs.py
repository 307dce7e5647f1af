"""The inputs stage (DVC's first): the backbones named in params, and the ImageNet classes visualize names
without the fine-tune, checked before any work; then the manifests of the files params name, rewritten only
where they changed (pipeline/sources.py)."""
from __future__ import annotations

import logging

from transferlab.models import families
from transferlab.pipeline import sources
from transferlab.pipeline.stages import StageIO
from transferlab.settings.sections import Params

log = logging.getLogger("transferlab")


def run(params: Params, io: StageIO) -> list[str]:
    check_names(params)
    changed = sources.refresh(params, io.output, io.root)
    log.info("inputs: %s", ", ".join(changed) + " changed" if changed else "unchanged")
    return changed


def check_names(params: Params) -> None:
    """The names params give that no later stage should be the first to refuse: the backbones, and the classes
    visualize names of the pretrained classifier (without the fine-tune). DVC runs it as this stage's first
    step, Snakemake when it reads the Snakefile."""
    families.check_names(params)
    if params.visualize.enabled and not params.finetune.enabled:
        from transferlab.models import backbones  # loads torch: only where visualize names ImageNet classes

        backbones.check_visualized_classes(params)
