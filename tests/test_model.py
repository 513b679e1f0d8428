"""The classifier: head shapes, preprocessing, local-only pretrained weights, parameter groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scanstream.devices import resolve_device
from scanstream.errors import CheckpointError, InputError
from scanstream.network.model import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Classifier,
    ModelConfig,
    build_model,
    imagenet_weight_files,
    parameter_groups,
    preprocess,
)


def test_contract_backbones():
    assert {"resnet50", "resnet18", "mobilenet_v3_small"} <= set(BACKBONES)


def test_resnet50_head_is_the_papers():
    model = build_model(ModelConfig())
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2048, 256), (256, 32), (32, 1)]
    assert sum(isinstance(m, nn.ReLU) for m in model.head.modules()) == 2


@pytest.mark.parametrize("backbone,features", [("resnet18", 512), ("mobilenet_v3_small", 576)])
def test_light_backbones_have_matching_head(backbone, features):
    model = build_model(ModelConfig(backbone=backbone, input_size=112))
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(features, 256), (256, 32), (32, 1)]


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small"])
@pytest.mark.parametrize("batch", [1, 3])
def test_forward_gives_one_logit_per_crop(backbone, batch):
    model = build_model(ModelConfig(backbone=backbone, input_size=64)).eval()
    with torch.no_grad():
        out = model(torch.randn(batch, 3, 64, 64))
    assert out.shape == (batch,) and out.dtype == torch.float32


def test_preprocess_shape_dtype_and_normalisation():
    crops = torch.zeros(2, 224, 224, 3, dtype=torch.uint8)
    crops[0] = 255
    x = preprocess(crops, 224)
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    for c in range(3):
        assert torch.allclose(x[0, c], torch.tensor((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]))
        assert torch.allclose(x[1, c], torch.tensor(-IMAGENET_MEAN[c] / IMAGENET_STD[c]))


def test_preprocess_resizes_with_antialiasing():
    crops = torch.zeros(1, 224, 224, 3, dtype=torch.uint8)
    crops[0, :, ::2] = 255  # one-pixel stripes: antialiased halving averages them to mid-grey
    x = preprocess(crops, 112)
    assert x.shape == (1, 3, 112, 112)
    grey = (0.5 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert torch.allclose(x[0, 0, 10:100, 10:100], torch.tensor(grey), atol=0.05)


def test_preprocess_channel_order_follows_nhwc():
    crops = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)
    crops[..., 1] = 255  # green only
    x = preprocess(crops, 8)
    assert (x[0, 1] > 2).all() and (x[0, 0] < 0).all() and (x[0, 2] < 0).all()


def test_preprocess_refuses_float_or_nchw():
    with pytest.raises(InputError, match="uint8"):
        preprocess(torch.zeros(1, 224, 224, 3), 112)
    with pytest.raises(InputError, match="uint8"):
        preprocess(torch.zeros(1, 3, 224, 224, dtype=torch.uint8), 112)


@pytest.mark.parametrize("kw", [{"backbone": "vgg99"}, {"input_size": 7}, {"input_size": 112.0}, {"pretrained": ""}])
def test_bad_model_config(kw):
    with pytest.raises(InputError):
        ModelConfig(**kw)


def test_imagenet_missing_names_expected_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    expected = tmp_path / "th" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert imagenet_weight_files("resnet18")[0] == expected
    with pytest.raises(CheckpointError, match="resnet18-f37072fd.pth") as err:
        build_model(ModelConfig(backbone="resnet18", pretrained="imagenet"))
    assert str(expected) in str(err.value) and "never downloads" in str(err.value)


def _torchvision_state(backbone: str) -> dict[str, torch.Tensor]:
    import torchvision.models as tvm

    torch.manual_seed(123)
    return getattr(tvm, backbone)(weights=None).state_dict()


def test_imagenet_from_torchvision_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    state = _torchvision_state("resnet18")
    path = imagenet_weight_files("resnet18")[0]
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    model = build_model(ModelConfig(backbone="resnet18", pretrained="imagenet"))
    assert torch.equal(model.net.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.net.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert model.head[0].in_features == 512  # the 1000-way fc was not loaded


def test_pretrained_safetensors_path(tmp_path):
    from safetensors.torch import save_file

    state = _torchvision_state("mobilenet_v3_small")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    model = build_model(ModelConfig(backbone="mobilenet_v3_small", pretrained=str(tmp_path / "w.safetensors")))
    assert torch.equal(model.net.features[0][0].weight, state["features.0.0.weight"])


def test_pretrained_weights_of_another_backbone_refused(tmp_path):
    from safetensors.torch import save_file

    save_file(_torchvision_state("resnet18"), str(tmp_path / "r18.safetensors"))
    with pytest.raises(CheckpointError, match="do not fit backbone resnet50"):
        build_model(ModelConfig(backbone="resnet50", pretrained=str(tmp_path / "r18.safetensors")))


def test_pretrained_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        build_model(ModelConfig(backbone="resnet18", pretrained=str(tmp_path / "nope.safetensors")))


def test_pretrained_arbitrary_pth_refused(tmp_path):
    torch.save(_torchvision_state("resnet18"), tmp_path / "mine.pth")
    with pytest.raises(CheckpointError, match="original name"):
        build_model(ModelConfig(backbone="resnet18", pretrained=str(tmp_path / "mine.pth")))


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small"])
def test_parameter_groups_partition_the_model(backbone):
    model = Classifier(backbone)
    groups = parameter_groups(model)
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert all(groups[k] for k in ("head", "norm", "late", "early"))
    assert {id(p) for p in model.head.parameters()} == {id(p) for p in groups["head"]}


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda"}
    with pytest.raises(InputError):
        resolve_device("tpu-ish")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small"])
def test_batchnorm_statistics_follow_training_quickly(backbone):
    """Eval mode must not collapse after a short run (MobileNetV3's own momentum is 0.01)."""
    model = build_model(ModelConfig(backbone=backbone, input_size=32))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.1 for m in bns)
