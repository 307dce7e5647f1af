"""Ideal-class images, adversarial examples and feature maps on a tiny random-init model."""
import pytest
import torch
from torchvision import models

from transferlab import backbones, visualize

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture
def model():
    torch.manual_seed(0)
    net = models.resnet18(num_classes=3)
    wrapped = backbones.Normalized(net, MEAN, STD)
    wrapped.requires_grad_(False)
    return wrapped


def test_ideal_image_raises_target_probability(model):
    noise = (0.5 + 0.1 * torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    with torch.no_grad():
        start = torch.softmax(model(noise), 1)[0, 2].item()
    pixels, prob = visualize.ideal_image(model, 2, 32, steps=30, step_size=0.05, tv_weight=0.0, jitter=2, seed=0)
    assert prob > start + 0.1 and prob > 0.5
    assert pixels.min() >= 0 and pixels.max() <= 1 and pixels.shape == (1, 3, 32, 32)


def test_total_variation_term_lowers_total_variation(model):
    rough, _ = visualize.ideal_image(model, 1, 32, steps=30, step_size=0.05, tv_weight=0.0, jitter=0, seed=0)
    smooth, _ = visualize.ideal_image(model, 1, 32, steps=30, step_size=0.05, tv_weight=5.0, jitter=0, seed=0)
    assert visualize.total_variation(smooth) < 0.8 * visualize.total_variation(rough)


def test_total_variation_of_constant_and_checkerboard():
    assert visualize.total_variation(torch.full((1, 3, 4, 4), 0.3)).item() == 0
    board = (torch.arange(4)[:, None] + torch.arange(4)[None]) % 2
    assert visualize.total_variation(board[None, None].float()).item() == pytest.approx(2.0)


@pytest.mark.parametrize("epsilon", [2.0, 8.0])
def test_adversarial_perturbation_stays_within_epsilon(model, epsilon):
    torch.manual_seed(1)
    pixels = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        predicted = model(pixels).argmax(1).item()
    target = (predicted + 1) % 3
    result = visualize.adversarial(model, pixels, target, epsilon, steps=40, step_size=0.5)
    delta = result["perturbation"]
    assert delta.abs().max().item() * 255 <= epsilon + 1e-4
    assert result["linf_pixels"] <= epsilon + 1e-4
    adv = result["adversarial"]
    assert adv.min() >= 0 and adv.max() <= 1
    torch.testing.assert_close(adv, pixels + delta)
    assert result["after"][target] > result["before"][target]
    if result["success"]:
        assert model(adv).argmax(1).item() == target


def test_feature_maps_from_three_depths(model):
    maps = visualize.feature_maps(model.model, model, torch.rand(1, 3, 64, 64))
    assert list(maps) == ["early", "middle", "late"]
    assert maps["early"].shape[0] == 4 and maps["early"].shape[1] > maps["late"].shape[1]
