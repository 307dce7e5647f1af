"""A checkpoint file read as weights: a torch state_dict (weights_only, its zip's CRC-32s checked first) or
safetensors, refused in one line when it is not readable, not a state_dict, not finite or of another
architecture. Used by the backbone families and the fine-tune alike."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from transferlab.core.errors import UserError


class WeightsUnavailable(UserError):
    """Pretrained weights are neither cached, downloadable nor given as a checkpoint."""


def check_crc(path: Path, what: str, fix: str) -> None:
    """A torch file is a zip whose members carry CRC-32s: bits flipped inside a tensor's data (which unpickling
    alone would load as other weights) make one fail. The damaged member, named, is a UserError."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UserError(f"{what}: not a readable torch file ({type(exc).__name__}: {exc}); {fix}") from None
    if damaged:
        raise UserError(f"{what}: damaged: its member {damaged} fails the CRC-32 check of the zip container "
                        f"(bits changed since it was written); {fix}")


def read_state(path: Path, what: str, fix: str) -> dict[str, torch.Tensor]:
    """A state_dict file (torch's, weights_only: no code runs; or safetensors), checked: a file that is none, whose
    zip members fail their CRC-32 (`check_crc`) or that holds non-finite numbers is a UserError, one line starting
    with `what`."""
    if path.suffix != ".safetensors":
        check_crc(path, what, fix)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, UnicodeDecodeError... for a damaged file
        reason = (str(exc).splitlines() or [""])[0][:160]
        raise UserError(f"{what}: not a readable torch file ({type(exc).__name__}: {reason}); {fix}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{what}: holds a {type(state).__name__}, not a state_dict; {fix}")
    bad = [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise UserError(f"{what}: {len(bad)} tensors hold NaN or infinity (first: {bad[0]}); {fix}")
    return state


def load_state(model: nn.Module, path: Path, what: str, fix: str) -> nn.Module:
    """Load a state_dict file into `model` (read_state); one that does not fit the architecture is a UserError."""
    state = read_state(path, what, fix)
    own = model.state_dict()
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    shapes = [k for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise UserError(f"{what}: does not fit {type(model).__name__} ({len(missing)} weights missing, "
                        f"{len(unexpected)} unexpected, {len(shapes)} of another shape; first: "
                        f"{(missing + unexpected + shapes)[0]}); {fix}")
    model.load_state_dict(state)
    return model
