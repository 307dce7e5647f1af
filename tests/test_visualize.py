"""Ideal-class images, adversarial examples and feature maps on a tiny random-init model."""
import pytest
import torch
from torchvision import models

from transferlab.models import backbones
from transferlab.reporting import visualize

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture
def model():
    torch.manual_seed(0)
    net = models.resnet18(num_classes=3)
    wrapped = backbones.Normalized(net, MEAN, STD)
    wrapped.requires_grad_(False)
    return wrapped


class Colours(torch.nn.Module):
    """Three classes scored by the mean colour: red, green, blue (what an ideal image must find)."""

    def forward(self, x):
        r, g, b = x.mean((2, 3)).unbind(1)
        return 20 * torch.stack([r - (g + b) / 2, g - (r + b) / 2, b - (r + g) / 2], 1)


def test_ideal_image_raises_target_probability_over_random_views():
    model = backbones.Normalized(Colours(), [0.5] * 3, [0.25] * 3)
    noise = (0.5 + 0.05 * torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    with torch.no_grad():
        start = torch.softmax(model(noise), 1)[0, 2].item()
    before = visualize.robust_probability(model, noise, 2, seed=0)
    pixels, record = visualize.ideal_image(model, 2, 32, steps=30, step_size=0.05, tv_weight=0.0, jitter=2, seed=0,
                                           n_views=2)
    assert start < 0.5 and record["probability"] > 0.9 and before < 0.5 and record["robust_probability"] > 0.9
    assert record["steps"] == 30
    assert record["robust_probability"] == round(visualize.robust_probability(model, pixels, 2, seed=0), 6)
    assert pixels.min() >= 0 and pixels.max() <= 1 and pixels.shape == (1, 3, 32, 32)
    blue = pixels[0, 2].mean() - pixels[0, :2].mean()
    assert blue > 0.02  # bluer than it is red or green: what the class scores


def test_views_are_crops_rescaled_and_mirrored_and_carry_the_gradient():
    generator = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, 40).repeat(1, 3, 40, 1).requires_grad_(True)  # brighter to the right
    batch = visualize.views(ramp, 16, 24, generator)
    assert batch.shape == (16, 3, 24, 24)
    left_to_right = batch[:, 0, 12, -1] > batch[:, 0, 12, 0]
    assert left_to_right.any() and (~left_to_right).any()  # some mirrored, some not
    assert (batch[:, 0, 12, -1] - batch[:, 0, 12, 0]).abs().min() < 0.99  # crops: not all the whole ramp
    batch.sum().backward()
    assert ramp.grad is not None and ramp.grad.abs().sum() > 0


def test_the_time_budget_stops_the_steps_and_the_image_keeps_its_size(model):
    pixels, record = visualize.ideal_image(model, 1, 32, steps=30, step_size=0.05, tv_weight=0.0, jitter=0, seed=0,
                                           seconds=1e-9)
    assert record["steps"] <= 1 and pixels.shape == (1, 3, 32, 32)


def test_no_imagenet_top5_without_pretrained_weights(model):
    assert visualize.imagenet_top5(None, [], torch.zeros(1, 3, 32, 32)) == []
    top = visualize.imagenet_top5(model, ["a", "b", "c"], torch.rand(1, 3, 32, 32))
    assert [c["class"] for c in top] and sorted(c["class"] for c in top) == ["a", "b", "c"]
    assert abs(sum(c["probability"] for c in top) - 1) < 1e-5


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
