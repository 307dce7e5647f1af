"""Progress bars that also reach the console: a tqdm bar (the stage's log, or a terminal) and, at most every
CONSOLE_EVERY seconds, one status line (what, how far, ETA) on the `transferlab.console` logger.

`runner.run_stage` sends that logger to standard output when standard error is not a terminal: Snakemake writes a
rule's standard error to `logs/<rule>.log` and shows its standard output, so a person watching `snakemake` sees
each long stage move; on a terminal (`dvc repro` run by hand) the live bar is there already.
"""
from __future__ import annotations

import logging
from typing import Any

from tqdm import tqdm

CONSOLE_EVERY = 10.0  # seconds between two status lines of one bar
console = logging.getLogger("transferlab.console")


def status(bar: tqdm) -> str:
    """'desc: n/total unit (pct) · elapsed · ETA' of a bar, as one line."""
    d = bar.format_dict
    done, total, unit = d["n"], d["total"], d["unit"]
    size = tqdm.format_sizeof if d["unit_scale"] else "{:g}".format  # bytes as 12.3M
    text = f"{d['prefix'] or 'progress'}: {size(done)}" + (f"/{size(total)}" if total else "") + f" {unit}"
    if total:
        text += f" ({100 * done / total:.0f} %)"
    text += f" · {tqdm.format_interval(d['elapsed'])} elapsed"
    rate = d["rate"] or (done / d["elapsed"] if d["elapsed"] else None)
    if total and done < total and rate:
        text += f" · ETA {tqdm.format_interval((total - done) / rate)}"
    return text


class Progress(tqdm):
    """tqdm, plus a status line on the console logger when the bar starts, at most every CONSOLE_EVERY seconds
    while it moves, and when it closes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._said: float | None = None
        self._last = ""
        super().__init__(*args, **kwargs)

    def _say(self) -> None:
        self._said, self._last = self._time(), status(self)
        console.info("%s", self._last)

    def display(self, *args: Any, **kwargs: Any) -> Any:
        if self._said is None or self._time() - self._said >= CONSOLE_EVERY:
            self._say()
        return super().display(*args, **kwargs)

    def close(self) -> None:
        if not self.disable and self._said is not None and self.n and status(self) != self._last:
            self._say()  # the closing line, whatever the time since the last
        super().close()
