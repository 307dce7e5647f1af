"""The backbone registry: torchvision and timm families built from local checkpoint files, their preprocessing
records, unfreeze groups (a ViT block by block), the frozen-prefix cut, names in params, and the whole pipeline
on a timm ViT with a sweep over both families (random-init small models)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import copy_project, random_checkpoint, resolved_backbone, run_stage, run_stages, stage_io
from test_features_head import prepare, tiny_params
from test_frozen import ABSOLUTE, TOLERANCE, cache_into, finetune_and_evaluate
from torch import nn

from transferlab.core.atomic import read_arrays
from transferlab.core.errors import ParamsError
from transferlab.finetuning import network
from transferlab.finetuning.prefix import cut
from transferlab.models import backbones
from transferlab.models.families import FAMILIES, load
from transferlab.models.preprocessing import Preprocessing
from transferlab.probe import head
from transferlab.settings import params
from transferlab.settings.sections import Head

SMALL = {"resnet18": (512, 5), "timm/resnet18": (512, 5), "timm/vit_tiny_patch16_224": (192, 13),
         "timm/convnext_atto": (320, 5)}  # feature size, unfreeze groups
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def model_params(backbone: str, checkpoint=None, weights: str = "none", image_size: int | None = 32):
    return resolved_backbone(backbone, weights, checkpoint, image_size)


def test_every_family_module_has_the_family_functions():
    for prefix in FAMILIES:
        module = load(prefix)
        for function in ("names", "build", "preprocessing", "class_names", "split", "groups"):
            assert callable(getattr(module, function)), (module.__name__, function)


@pytest.mark.parametrize("backbone, suffix", [("resnet18", ".pth"), ("timm/resnet18", ".pth"),
                                             ("timm/vit_tiny_patch16_224", ".safetensors"),
                                             ("timm/convnext_atto", ".safetensors")])
def test_each_family_loads_a_local_checkpoint_splits_groups_and_cuts(tmp_path, backbone, suffix):
    """A torch state_dict file or timm's safetensors (as the Hub serves them), loaded into the same seeded model."""
    path = random_checkpoint(tmp_path / f"weights{suffix}", backbone, seed=3)
    reference, _ = backbones.load_classifier(model_params(backbone), seed=3)  # the same seeded weights
    loaded, info = backbones.load_classifier(model_params(backbone, path, weights="DEFAULT"), seed=99)
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), reference(x))
    assert info["checkpoint_sha256"] and info["backbone"] == backbone
    extractor, dim, _ = backbones.load_feature_extractor(model_params(backbone, path))
    with torch.inference_mode():
        out = extractor(x)
    assert (dim, len(backbones.blocks(extractor))) == SMALL[backbone] and out.shape == (2, dim)
    assert not any(p.requires_grad for p in extractor.parameters())
    prefix, suffix_net, boundary = cut(extractor, 2)
    with torch.inference_mode():
        torch.testing.assert_close(suffix_net(prefix(x)), out, rtol=0, atol=0)
    assert boundary in dict(extractor.named_modules())


def test_unfreeze_2_on_a_timm_vit_trains_its_last_two_blocks_the_final_norm_and_the_head():
    body, dim = backbones.architecture(model_params("timm/vit_tiny_patch16_224"))
    net = network.FineTuneNet(body, nn.Linear(dim, 3))
    network.freeze(net, 2)
    trainable = sorted(n for n, p in net.named_parameters() if p.requires_grad)
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
             "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    assert trainable == sorted([f"backbone.blocks.{i}.{p}" for i in (10, 11) for p in block]
                               + ["backbone.norm.weight", "backbone.norm.bias", "head.weight", "head.bias"])
    network.freeze(net, 12)  # as many as its transformer blocks: still not the patch embedding nor the tokens
    assert not net.backbone.cls_token.requires_grad and not net.backbone.patch_embed.proj.weight.requires_grad
    for unfreeze in (13, "all"):  # every group: the embeddings and the class and position tokens train too
        network.freeze(net, unfreeze)
        assert all(p.requires_grad for p in net.parameters())


def test_a_torchvision_vit_is_unfrozen_layer_by_layer():
    body, _ = backbones.architecture(model_params("vit_b_16", image_size=None))
    groups = backbones.blocks(body)
    assert len(groups) == 13 and groups[0] is body.conv_proj
    assert list(groups[-1]) == [body.encoder.layers[-1], body.encoder.ln]


def test_timm_preprocessing_is_the_checkpoint_s_pretrained_cfg():
    tiny = model_params("timm/vit_tiny_patch16_224", image_size=None).preprocessing
    assert tiny == Preprocessing(248, 224, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # crop_pct 0.9
    assert model_params("timm/vit_tiny_patch16_224").preprocessing == Preprocessing(
        35, 32, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    dino = model_params("timm/vit_small_patch14_dinov2.lvd142m", image_size=None).preprocessing
    assert dino == Preprocessing(518, 518, "bicubic", *IMAGENET)  # crop_pct 1.0
    convnext = model_params("timm/convnext_atto", image_size=None).preprocessing
    assert convnext == Preprocessing(256, 224, "bicubic", *IMAGENET)  # crop_pct 0.875


def test_the_shipped_mobilenet_v2_keeps_its_preprocessing_and_blocks():
    """What the README's numbers were computed with: IMAGENET1K_V1's 256 → 224 bilinear, 19 blocks of `features`."""
    shipped = resolved_backbone("mobilenet_v2", "IMAGENET1K_V1")
    assert shipped.preprocessing == Preprocessing(256, 224, "bilinear", *IMAGENET)
    body, dim = backbones.architecture(shipped)
    groups = backbones.blocks(body)
    assert dim == 1280 and groups == list(body.features.children())


def test_class_names_of_the_pretraining_classifier():
    assert backbones.class_names(model_params("resnet18", weights="DEFAULT"))[:2] == ["tench", "goldfish"]
    timm_names = backbones.class_names(model_params("timm/resnet18"))
    assert len(timm_names) == 1000 and timm_names[281:284] == ["tabby", "tiger cat", "Persian cat"]
    assert backbones.class_names(model_params("timm/vit_small_patch14_dinov2.lvd142m")) is None  # no classifier


def test_params_ask_the_registry_for_names(tmp_path):
    """The backbones params name are checked against their families' lists where the engines check params before
    any work (the Snakefile, the inputs stage) and where a network is built, not by params validation: a stage
    depends on a family's code only where it builds a network."""
    from transferlab.models import families

    families.check_names(params.validate({"model": {"backbone": "timm/convnext_atto", "weights": "DEFAULT"}}))
    families.check_names(params.validate({"model": {"backbone": "timm/vit_small_patch14_dinov2.lvd142m",
                                                    "weights": "DEFAULT"},
                                          "sweep": {"backbones": ["mobilenet_v2", "timm/convnext_atto"]}}))
    with pytest.raises(ParamsError, match=r"model.backbone: unknown timm model 'convnext_nope' \(choose from "
                                          r"timm.list_models\(\)"):
        families.check_names(params.validate({"model": {"backbone": "timm/convnext_nope"}}))
    with pytest.raises(ParamsError, match=r"sweep.backbones: unknown torchvision classification model 'resnet7'"):
        families.check_names(params.validate({"sweep": {"backbones": ["resnet7"]}}))
    with pytest.raises(ParamsError, match=r"model.weights: 'IMAGENET1K_V1' is not one of timm/convnext_atto's "
                                          r"weights \(DEFAULT, none\)"):
        families.check_names(params.validate({"model": {"backbone": "timm/convnext_atto", "weights": "IMAGENET1K_V1"}}))
    with pytest.raises(ParamsError, match=r"model.backbone: unknown torchvision classification model 'resnet7'"):
        resolved_backbone("resnet7")
    with pytest.raises(ParamsError, match="sweep.checkpoints: timm/resnet18 is not in sweep.backbones"):
        params.validate({"sweep": {"checkpoints": {"timm/resnet18": "x.pth"}}})
    with pytest.raises(ParamsError, match="sweep.checkpoints: resnet18: no such file: missing.pth"):
        params.validate({"sweep": {"backbones": ["resnet18"], "checkpoints": {"resnet18": "missing.pth"}}}, tmp_path)


def test_a_vit_fine_tunes_from_its_frozen_token_cache_as_on_the_fly(tmp_path):
    """The frozen prefix of a timm ViT (patch embedding, tokens, the first 11 blocks) cached as token sequences:
    training the last block from them equals training on the fly."""
    data_dir = prepare(tmp_path)
    p = tiny_params("timm/vit_tiny_patch16_224", engine="torch")
    p = p.updated(finetune=dict(epochs=2, batch_size=4, num_workers=0, unfreeze=1, lr=1e-4, patience=5,
                                augment={"scale": [0.5, 1.0], "flip": True, "rotation": 15, "jitter": 0.2}))
    run_stage("extract", p, stage_io("extract", data_dir, tmp_path / "feat"))
    train, val = (read_arrays(tmp_path / "feat" / f"{s}.npz") for s in ("train", "val"))
    probe, _ = head.fit(train, val, Head([1.0], 500, "train"))
    head.save(probe, tmp_path / "probe.npz", [str(c) for c in train["classes"]])
    record, meta = cache_into(tmp_path, data_dir, p)
    assert record["cached"] and record["boundary"] == "blocks.10" and record["shape"] == [5, 192]  # 4 patches + class
    cached = finetune_and_evaluate(tmp_path, data_dir, p, meta, "cached")
    p = p.updated(finetune={"cache": "never"})
    never, never_meta = cache_into(tmp_path, data_dir, p, "never")
    fly = finetune_and_evaluate(tmp_path, data_dir, p, never_meta, "fly")
    assert cached[0]["from_cache"] and not fly[0]["from_cache"]
    columns = ["train_loss", "train_accuracy", "val_loss", "val_accuracy"]
    np.testing.assert_allclose(cached[1][columns], fly[1][columns], rtol=TOLERANCE, atol=ABSOLUTE)
    np.testing.assert_allclose(cached[3]["confidence"], fly[3]["confidence"], rtol=TOLERANCE, atol=2e-6)


def test_the_pipeline_on_a_timm_vit_with_a_sweep_over_both_families(tmp_path):
    """Every stage, at library level (tests/test_engines_alone.py runs a timm backbone under both engines):
    model.backbone a timm ViT from a local checkpoint; the sweep over it, a timm ConvNeXt, a timm ResNet and a
    torchvision ResNet from theirs (each point: features, head, frozen-prefix cache, fine-tune, test scores)."""
    project = copy_project(tmp_path)
    weights = tmp_path / "weights"
    vit, convnext, timm_resnet, resnet = "timm/vit_tiny_patch16_224", "timm/convnext_atto", "timm/resnet18", "resnet18"
    files = {b: random_checkpoint(weights / (f"{b[5:]}.safetensors" if b.startswith("timm/") else f"{b}.pth"), b)
             for b in (vit, convnext, timm_resnet, resnet)}
    p = yaml.safe_load((project / "params.yaml").read_text())
    p["model"].update(backbone=vit, checkpoint=f"../weights/{files[vit].name}")
    p["visualize"].update(target_class="ant")
    p["sweep"].update(backbones=[vit, convnext, timm_resnet, resnet], fractions=[0.5],
                      checkpoints={b: f"../weights/{files[b].name}" for b in (convnext, timm_resnet, resnet)})
    (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    run_stages(project)

    meta = json.loads((project / "results/features/meta.json").read_text())
    assert meta["backbone"] == vit and meta["feature_dim"] == 192
    assert json.loads((project / "results/frozen/meta.json").read_text())["boundary"] == "blocks.10"
    assert json.loads((project / "results/finetune/summary.json").read_text())["from_cache"]
    assert json.loads((project / "results/model/summary.json").read_text())["check"]["top1_differences"] == 0
    shown = json.loads((project / "results/visualize/summary.json").read_text())
    assert shown["feature_maps"]["figure"] and (project / "results/visualize" / shown["feature_maps"]["figure"]).stat().st_size
    record = json.loads((project / "results/model/preprocessing.json").read_text())
    assert (record["resize_size"], record["crop_size"], record["interpolation"]) == (35, 32, "bicubic")
    points = pd.read_csv(project / "results/curve/points.csv")
    assert set(points["backbone"]) == {vit, convnext, timm_resnet, resnet} and len(points) == 8  # × probe/fine-tune
    for backbone in (convnext, timm_resnet, resnet):  # each from its own checkpoint, under its name's folders
        extracted = json.loads((project / f"results/sweep/{backbone}/features/meta.json").read_text())
        assert extracted["backbone"] == backbone and extracted["checkpoint"] == p["sweep"]["checkpoints"][backbone]
    assert "timm/convnext_atto" in (project / "results/report.html").read_text()
