"""The fine-tuned network: the probe's backbone and trained head as one module, and which of its blocks train."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferlab.models import backbones, weights
from transferlab.models.backbones import Backbone


class FineTuneNet(nn.Module):
    """Feature extractor followed by a linear classification head."""

    def __init__(self, backbone: nn.Module, head_layer: nn.Linear):
        super().__init__()
        self.backbone, self.head = backbone, head_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def unfrozen_blocks(model: FineTuneNet, unfreeze: int | str) -> list[nn.Module]:
    """The blocks `finetune.unfreeze` trains: all (the whole backbone: as many blocks as it has, or 'all'; a ViT's
    class token and position embedding too), or the last n (0 = none)."""
    all_blocks = backbones.blocks(model.backbone)
    if unfreeze == "all" or unfreeze >= len(all_blocks):
        return [model.backbone]
    return all_blocks[len(all_blocks) - unfreeze:] if unfreeze else []


def freeze(model: FineTuneNet, unfreeze: int | str) -> list[nn.Parameter]:
    """Make only the head and the unfrozen blocks trainable; return the trainable backbone parameters."""
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    for block in unfrozen_blocks(model, unfreeze):
        block.requires_grad_(True)
    return [p for p in model.backbone.parameters() if p.requires_grad]


def train_mode(model: FineTuneNet, unfreeze: int | str, train_bn: bool) -> None:
    """Frozen blocks stay in eval mode (their BatchNorm keeps its running statistics); unfrozen blocks train,
    with BatchNorm in eval mode unless train_bn."""
    model.eval()
    model.head.train()
    for block in unfrozen_blocks(model, unfreeze):
        block.train()
        if not train_bn:
            for m in block.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()


def build(backbone: Backbone, probe: tuple[np.ndarray, np.ndarray]) -> FineTuneNet:
    """Backbone as in extraction + a Linear head holding the probe's weights and bias, its scaler folded in
    (`head.linear`, `head.as_linear`)."""
    body, dim, _ = backbones.load_feature_extractor(backbone)
    weight, bias = probe
    layer = nn.Linear(dim, len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        layer.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return FineTuneNet(body, layer)


def load(backbone: Backbone, weights_path: Path | str, n_classes: int) -> FineTuneNet:
    """Rebuild the fine-tuned network from its saved state_dict (weights_only: no code is executed)."""
    body, dim = backbones.architecture(backbone)
    model = FineTuneNet(body, nn.Linear(dim, n_classes))
    weights.load_state(model, Path(weights_path), str(weights_path), "re-run the finetune stage that writes it")
    return model.eval()


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
