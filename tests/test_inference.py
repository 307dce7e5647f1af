"""The fast extraction path: image decoding, the ONNX Runtime and bfloat16 engines, and GPU-style batch decoding."""
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import MOBILENET, PETS, need, resolved_backbone
from PIL import Image
from test_features_head import prepare, tiny_params
from torchvision import models

from transferlab.data.images import load_encoded, load_rgb, load_tensor
from transferlab.inference import backends, batches
from transferlab.inference.transforms import evaluation
from transferlab.models import backbones
from transferlab.models.preprocessing import Preprocessing


def photo(path, size, mode="RGB", fmt=None):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    image.save(path, format=fmt)
    return path


@pytest.mark.parametrize("mode, name", [("RGB", "a.jpg"), ("L", "g.jpg"), ("CMYK", "c.jpg"), ("RGBA", "t.png"),
                                        ("P", "p.png"), ("RGB", "b.bmp")])
def test_load_tensor_gives_uint8_rgb_like_pil(tmp_path, mode, name):
    path = photo(tmp_path / name, (120, 90), mode)
    tensor = load_tensor(path)
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 90, 120)
    reference = torch.from_numpy(np.array(load_rgb(path))).permute(2, 0, 1).int()
    assert (tensor.int() - reference).abs().float().mean() < 3  # decoders may round differently (CMYK, IDCT)


def test_large_jpegs_are_decoded_reduced_but_never_below_the_resize(tmp_path):
    path = photo(tmp_path / "big.jpg", (1600, 1200))
    assert load_tensor(path).shape == (3, 1200, 1600)
    reduced = load_tensor(path, min_size=256)
    assert reduced.shape == (3, 300, 400)  # scale 1/4: both sides stay >= 256
    assert load_tensor(photo(tmp_path / "small.jpg", (500, 375)), min_size=256).shape == (3, 375, 500)


def test_fast_preprocessing_matches_the_weights_transform(tmp_path):
    plain = resolved_backbone("resnet50", "IMAGENET1K_V2").preprocessing
    assert plain == Preprocessing(232, 224, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    path = photo(tmp_path / "x.jpg", (500, 375))
    reference = models.ResNet50_Weights.IMAGENET1K_V2.transforms()(load_rgb(path))  # torchvision's own, on PIL
    fast = evaluation(plain)(load_tensor(path))
    assert fast.shape == reference.shape == (3, 224, 224)
    assert (fast - reference).abs().mean() < 0.02  # uint8 vs float resampling: a fraction of one grey level


def uint8_model(net):
    return backbones.Normalized(net, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], scale=255)


def test_onnx_engine_matches_torch_and_auto_falls_back(tmp_path):
    model = uint8_model(models.resnet18(num_classes=10))
    forward, info = backends.build(model, "onnxruntime", "float32", torch.device("cpu"), 64, tmp_path / "m.onnx")
    assert info["engine"] == "onnxruntime" and info["onnx_max_relative_difference"] <= backends.ONNX_TOLERANCE
    x = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        reference = model(x).numpy()
    assert backends.difference(reference, forward(x)) <= backends.ONNX_TOLERANCE
    # VGG's adaptive pooling at 32 px cannot be exported: auto runs torch, an explicit choice is a clear error
    vgg = uint8_model(models.vgg11())
    _, info = backends.build(vgg, "auto", "float32", torch.device("cpu"), 32, tmp_path / "v.onnx")
    assert info["engine"] == "torch"
    with pytest.raises(backends.EngineUnavailable, match="engine: onnxruntime cannot run"):
        backends.build(vgg, "onnxruntime", "float32", torch.device("cpu"), 32, tmp_path / "v.onnx")
    with pytest.raises(backends.EngineUnavailable, match="only available with engine: torch"):
        backends.build(model, "onnxruntime", "bfloat16", torch.device("cpu"), 64, tmp_path / "m.onnx")


def test_export_check_refuses_a_graph_that_disagrees():
    model = uint8_model(models.resnet18(num_classes=10))
    with pytest.raises(RuntimeError, match="differs from torch"):
        backends.check_export(model, lambda x: model(x).detach().numpy() * 1.001, 64)


def test_bfloat16_runs_where_supported_else_says_why(monkeypatch):
    model = models.resnet18(num_classes=10).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        reference = model(x).numpy()
    if backends.bf16_supported(torch.device("cpu")):
        out = backends.torch_forward(model, torch.device("cpu"), "bfloat16")(x)
        assert out.dtype == np.float32 and 0 < backends.difference(reference, out) < 0.1
    monkeypatch.setattr(backends, "bf16_supported", lambda dev: False)
    with pytest.raises(backends.EngineUnavailable, match="bfloat16 needs"):
        backends.torch_forward(model, torch.device("cpu"), "bfloat16")


def test_device_decoding_path_gives_the_same_batches(tmp_path):
    """The CUDA path (JPEG bytes decoded in one batched call on the device) run on the CPU equals the worker path."""
    data_dir = prepare(tmp_path)
    frame = pd.read_csv(data_dir / "splits" / "train.csv")
    photo(tmp_path / "src" / "ant" / "extra.png", (50, 40), "RGBA")
    frame = pd.concat([frame, pd.DataFrame({"path": ["ant/extra.png"], "label": ["ant"]})], ignore_index=True)
    plain = evaluation(backbones.resolved(tiny_params().model).preprocessing)
    args = (tmp_path / "src", frame, ["ant", "bee", "cat"], plain, 36)
    assert load_encoded(tmp_path / "src" / "ant" / "extra.png").ndim == 3  # PNGs are decoded in the worker
    assert load_encoded(tmp_path / "src" / frame["path"][0]).ndim == 1
    worker = [x for x, _, _ in batches.loader(batches.ImageList(*args), 5, 0)]
    encoded = batches.ImageList(*args, encoded=True)
    device = [encoded.prepare(items, rows, torch.device("cpu")) for items, _, rows in batches.loader(encoded, 5, 0)]
    for a, b in zip(worker, device, strict=True):
        torch.testing.assert_close(a, b)


def test_real_weights_onnx_features_match_torch_on_photos(tmp_path):
    need(MOBILENET), need(PETS)
    backbone = resolved_backbone("mobilenet_v2", "IMAGENET1K_V1", MOBILENET)
    extractor, _, _ = backbones.load_feature_extractor(backbone)
    plain = backbone.preprocessing
    model = backbones.Normalized(extractor, plain.mean, plain.std, scale=255)
    x = torch.stack([evaluation(plain, normalize=False)(load_tensor(p))
                     for p in sorted((PETS / "images").glob("*.jpg"))[:8]])
    forward, info = backends.build(model, "onnxruntime", "float32", torch.device("cpu"), 224, tmp_path / "m.onnx")
    with torch.inference_mode():
        reference = model(x).numpy()
    assert backends.difference(reference, forward(x)) <= backends.ONNX_TOLERANCE
