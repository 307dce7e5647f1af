"""Progress on the console: a status line when a bar starts, at most every CONSOLE_EVERY seconds, and at its end."""
import io
import logging
import subprocess
import sys

import tqdm.std

from transferlab.core.progress import CONSOLE_EVERY, Progress


def test_status_lines_start_then_every_ten_seconds_then_end(monkeypatch, caplog):
    clock = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: clock[0])
    caplog.set_level(logging.INFO, logger="transferlab.console")
    with Progress(total=95, desc="extract train", unit="img", mininterval=0, miniters=1, file=io.StringIO()) as bar:
        for _ in range(95):
            clock[0] += 1.0
            bar.update(1)
    lines = [r.getMessage() for r in caplog.records if r.name == "transferlab.console"]
    assert CONSOLE_EVERY == 10
    assert lines[0] == "extract train: 0/95 img (0 %) · 00:00 elapsed"
    assert lines[1].startswith("extract train: 10/95 img (11 %) · 00:10 elapsed · ETA 01:")
    assert [line.split(":")[1].split("/")[0].strip() for line in lines] == ["0", "10", "20", "30", "40", "50", "60",
                                                                             "70", "80", "90", "95"]
    assert lines[-1] == "extract train: 95/95 img (100 %) · 01:35 elapsed"


def test_bytes_read_as_sizes_and_a_bar_without_total_counts():
    from transferlab.core.progress import status

    with Progress(total=3_000_000, initial=1_500_000, unit="B", unit_scale=True, desc="download x.tar",
                  file=io.StringIO()) as bar:
        assert status(bar).startswith("download x.tar: 1.50M/3.00M B (50 %)")
    with Progress(desc="scan", unit="img", file=io.StringIO()) as bar:
        bar.update(7)
        assert status(bar).startswith("scan: 7 img · ")


STAGE = """
import logging, sys
from transferlab.pipeline import runner
from transferlab.core.progress import Progress
logging.basicConfig(level=logging.INFO)
runner.show_progress("extract")
for _ in Progress(range(3), desc="extract train", unit="img"):
    pass
"""


def test_a_stage_prints_status_lines_on_standard_output_its_bars_on_standard_error():
    """As Snakemake runs a rule (standard error to the log, not a terminal): the console gets the status lines."""
    out = subprocess.run([sys.executable, "-c", STAGE], capture_output=True, text=True, check=True)
    assert "[extract] extract train: 0/3 img (0 %)" in out.stdout and "[extract] extract train: 3/3 img (100 %)" in out.stdout
    assert "extract train: 100%|" in out.stderr  # the tqdm bar: the rule's log
    assert "[extract] extract train" not in out.stderr
