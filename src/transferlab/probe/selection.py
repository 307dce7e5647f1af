"""The one rule both arms of the comparison use to pick a setting on the validation split: the probe's C and the
fine-tune's learning rates and weight decay."""
from __future__ import annotations

import numpy as np
import pandas as pd

TIE = 1e-9  # validation log-losses this close are equal


def choose(search: pd.DataFrame, simpler: list[tuple[str, bool]]) -> int:
    """The row of a validation search to keep: the lowest validation log-loss (`val_log_loss`); among rows
    within TIE of it, the simplest, ordered by `simpler` ((column, True where a smaller value is simpler), the
    first column deciding first).

    Log-loss, not accuracy: accuracy moves in steps of one validation image, so the last-bit differences between
    CPUs' kernels flipped the choice where two settings were one image apart; log-loss varies smoothly with them.
    """
    loss = search["val_log_loss"].to_numpy(dtype=float)
    tied = search[loss <= np.nanmin(loss) + TIE]
    columns = [c for c, _ in simpler]
    return int(tied.sort_values(columns, ascending=[a for _, a in simpler], kind="stable").index[0])
