"""Inference engines for the frozen backbone: eager PyTorch (float32, or bfloat16 autocast) and ONNX Runtime.

Each engine is a function from a batch of uint8 images (N, 3, H, W) to float32 outputs, so the extract stage
does not care which one runs; the module given normalises its input itself (backbones.Normalized with
scale=255). The ONNX graph is exported from the same torch module and checked against it before use.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferlab.core.errors import UserError

log = logging.getLogger("transferlab")

# Largest difference allowed between the exported graph's outputs and torch's, relative to the largest feature.
ONNX_TOLERANCE = 1e-4

Forward = Callable[[torch.Tensor], np.ndarray]


class EngineUnavailable(UserError):
    """The engine/precision asked for in params cannot run on this machine."""


def bf16_supported(dev: torch.device) -> bool:
    """Whether bfloat16 matrix products run natively (CUDA with bf16, or a CPU with AVX512-BF16 or AMX)."""
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    capabilities = torch.cpu.get_capabilities()
    return torch.backends.mkldnn.is_available() and bool(capabilities.get("avx512_bf16")
                                                         or capabilities.get("amx_tile"))


def torch_forward(model: nn.Module, dev: torch.device, precision: str = "float32") -> Forward:
    """Eager forward pass in inference mode, channels_last, optionally under bfloat16 autocast."""
    if precision == "bfloat16" and not bf16_supported(dev):
        raise EngineUnavailable(f"features.precision: bfloat16 needs a CUDA GPU with bf16 or a CPU with AVX512-BF16 or "
                                f"AMX; this {dev.type} has neither (emulated bf16 would be slower than float32). "
                                f"Use precision: float32")
    model = model.to(dev).to(memory_format=torch.channels_last).eval()
    dtype = torch.bfloat16 if precision == "bfloat16" else None

    @torch.inference_mode()
    def forward(images: torch.Tensor) -> np.ndarray:
        images = images.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return model(images).float().cpu().numpy()

    return forward


def export_onnx(model: nn.Module, image_size: int, path: Path, output_name: str = "features") -> Path:
    """Export the float32 CPU module (uint8 input `images`) to an ONNX graph with a dynamic batch dimension."""
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    example = torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8)
    with warnings.catch_warnings():  # the TorchScript exporter needs no onnxscript and exports these CNNs exactly
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["images"],
                          output_names=[output_name], dynamic_axes={"images": {0: "batch"}, output_name: {0: "batch"}})
    return path


def export_bytes(model: nn.Module) -> int:
    """About what `export_onnx` writes for the module: its weights and buffers as float32."""
    return 4 * sum(t.numel() for t in [*model.parameters(), *model.buffers()])


def onnx_forward(path: Path, threads: int = 1) -> tuple[Forward, str]:
    """An ONNX Runtime session over the graph (CUDA provider where installed); returns (forward, provider).

    The session may be called from several threads at once (one stream per core, see features.compute).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise EngineUnavailable("features.engine: onnxruntime is not installed (pip install onnxruntime)") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads would take the cores from the streams decoding their next batch.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    wanted = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    session = ort.InferenceSession(str(path), options, providers=wanted)

    def forward(images: torch.Tensor) -> np.ndarray:
        return session.run(None, {"images": images.cpu().contiguous().numpy()})[0]

    return forward, session.get_providers()[0]


def difference(reference: np.ndarray, other: np.ndarray) -> float:
    """Largest absolute difference relative to the largest absolute reference value."""
    return float(np.abs(reference - other).max() / max(float(np.abs(reference).max()), 1e-12))


def check_export(model: nn.Module, forward: Forward, image_size: int, seed: int = 0) -> float:
    """Compare the engine with the float32 torch module on random images; raise if they disagree beyond tolerance."""
    images = torch.randint(0, 256, (2, 3, image_size, image_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        reference = model.cpu().eval()(images).numpy()
    error = difference(reference, forward(images))
    if not error <= ONNX_TOLERANCE:
        raise RuntimeError(f"ONNX export differs from torch by {error:.2e} (relative, > {ONNX_TOLERANCE:g}); "
                           f"use features.engine: torch for this backbone")
    return error


def build(model: nn.Module, engine: str, precision: str, dev: torch.device, image_size: int, onnx_path: Path,
          threads: int = 1) -> tuple[Forward, dict]:
    """The forward function for params' `features.engine`/`features.precision`, and what ran (for meta.json).

    ONNX Runtime's graph is written to `onnx_path` (a scratch file the caller removes).
    """
    if engine == "torch" or (engine == "auto" and (dev.type == "cuda" or precision != "float32")):
        return torch_forward(model, dev, precision), {"engine": "torch", "precision": precision}
    if precision != "float32":
        raise EngineUnavailable(f"features.precision: {precision} is only available with engine: torch "
                                f"(ONNX Runtime runs the float32 graph)")
    try:
        path = export_onnx(model, image_size, onnx_path)
        forward, provider = onnx_forward(path, threads)
        error = check_export(model, forward, image_size)
    except RuntimeError as exc:
        if engine == "onnxruntime":
            raise EngineUnavailable(f"features.engine: onnxruntime cannot run this backbone: {str(exc)[:300]}. "
                                    f"Use engine: torch (or auto)") from None
        log.warning("ONNX Runtime unavailable for this backbone (%s); using torch", str(exc)[:200])
        return torch_forward(model, dev, precision), {"engine": "torch", "precision": precision}
    return forward, {"engine": "onnxruntime", "precision": precision, "provider": provider,
                     "onnx_max_relative_difference": error}
