"""The export stage (serve/export.py): the chosen classifier as ONNX, its labels, preprocessing record, summary
and model card, from the stage's declared inputs only."""
from __future__ import annotations

import logging
import time
from typing import Any

from transferlab.core.atomic import atomic_path, read_json, read_table, write_json
from transferlab.core.project import data_root
from transferlab.pipeline.stages import StageIO
from transferlab.serve import export, predict
from transferlab.settings.sections import Params

log = logging.getLogger("transferlab")


def run(params: Params, io: StageIO, batch_size: int = 32) -> dict[str, Any]:
    start = time.perf_counter()
    inputs, out = io.input, io.output
    files = predict.ModelFiles(inputs.meta, inputs.probe, inputs.finetune,
                               {"probe": inputs.probe_metrics, "finetune": inputs.finetune_metrics},
                               params.finetune.enabled, io.root)
    method, why = predict.resolve(files, params.export.method)
    model = predict.extracted(files)
    dataset = read_json(inputs.dataset)
    plain, labels = model.backbone.preprocessing, model.classes
    checked = export.export(predict.network(files, method, model), plain, labels, data_root(dataset, io.root),
                            read_table(inputs.splits.test), out.model, batch_size)
    onnx_bytes = checked.pop("onnx_bytes")
    summary = {"method": method, "why": why, "labels": len(labels), "backbone": model.backbone.name,
               "weights": model.backbone.weights, "image_size": plain.crop, "check": checked,
               "onnx_bytes": onnx_bytes, "seconds": round(time.perf_counter() - start, 3)}
    write_json(out.labels, labels)
    record = predict.preprocessing_record(plain)
    write_json(out.preprocessing, record)
    write_json(out.summary, summary)
    card = export.model_card(inputs.template, summary, predict.evaluated(files), dataset,
                             read_json(inputs.splits.summary), model.backbone, record)
    with atomic_path(out.card) as tmp:
        tmp.write_text(card)
    log.info("export: %s", summary)
    return summary
