"""The sweep_aggregate stage: the points table, the curve, its plot, metrics and a summary from every point
(evaluate/curve.py)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transferlab.core.atomic import read_json, write_csv, write_json
from transferlab.core.errors import UserError
from transferlab.evaluate import curve
from transferlab.pipeline import layout
from transferlab.pipeline.layout import points
from transferlab.pipeline.stages import StageIO, params_for
from transferlab.settings.sections import Params

log = logging.getLogger("transferlab")


def metric_files(params: Params, sweep_dir: Path) -> list[Path]:
    """The metrics file of every grid point under the sweep folder, however the engine spelled its fraction
    (0.5, 1 or 1.0)."""
    wanted = set(points(params))
    template = Path(layout.FILES["sweep_point"]["metrics"]).relative_to(layout.SWEEP)
    found = {}
    paths = [p for b in params.sweep.backbones
             for p in sorted(sweep_dir.glob(str(template).format(backbone=b, fraction="*", seed="*")))]
    for path in paths:  # a backbone's name may hold a slash (timm/...): fraction and seed are the last folders
        parts = path.relative_to(sweep_dir).parts
        backbone, fraction, seed = "/".join(parts[:-3]), parts[-3], parts[-2]
        try:
            key = (backbone, float(fraction), int(seed))
        except ValueError:
            continue
        if key in wanted:
            found[key] = path
    missing = sorted(wanted - set(found))
    if missing:
        raise UserError(f"sweep points without results (run them first): {missing}")
    return [found[key] for key in sorted(found)]


def run(params: Params, io: StageIO) -> dict[str, Any]:
    files = metric_files(params, io.input.points)
    point_metrics = [read_json(p) for p in files]
    sources = {json.dumps({k: v for k, v in m["made_from"].items() if k != "params"}, sort_keys=True)
               for m in point_metrics}
    if len(sources) != 1:
        raise UserError("sweep_aggregate: the sweep points were made from different datasets; re-run sweep_point")
    confidence = point_metrics[0]["confidence"]
    frame = curve.table(point_metrics)
    points_curve = curve.curve(frame)
    out = io.output
    write_csv(out.points, frame)
    write_csv(out.curve, points_curve)
    write_json(out.metrics, curve.metrics(points_curve))
    curve.plot(points_curve, out.plot, confidence)
    summary = {"points": len(files), "reading": curve.reading(points_curve), "confidence": confidence,
               "made_from": {**json.loads(sources.pop()), "params": params_for(params, "sweep_aggregate")}}
    write_json(out.summary, summary)
    log.info("%d points: %s", summary["points"], summary["reading"])
    return summary
