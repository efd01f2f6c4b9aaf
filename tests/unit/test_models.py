"""Model registry: output shapes, stems, determinism, batch independence and error messages."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lbfl_mpi import config
from lbfl_mpi.models import MODELS, ModelError, build_model
from lbfl_mpi.models.vision import vit_patch_size

NUM_CLASSES = 5
SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
# ViT-B is ~86M parameters; two shapes cover both the tiny-patch and 3-channel paths.
CASES = [(n, s) for n in MODELS for s in SHAPES if not (n == "vit_b_16" and s == (1, 28, 28))]


def _forward(model: nn.Module, shape: tuple, batch: int = 2) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(batch, *shape))


def test_registry_matches_config_choices():
    assert set(MODELS) == set(config.MODELS)
    assert len(MODELS) == 8


@pytest.mark.parametrize("name,shape", CASES, ids=[f"{n}-{'x'.join(map(str, s))}" for n, s in CASES])
def test_forward_shape_and_finite(name, shape):
    torch.manual_seed(0)
    y = _forward(build_model(name, shape, NUM_CLASSES), shape)
    assert y.shape == (2, NUM_CLASSES)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["vgg11", "alexnet", "resnet18"])
def test_imagenet_size_input(name):
    torch.manual_seed(0)
    y = _forward(build_model(name, (3, 224, 224), NUM_CLASSES), (3, 224, 224), batch=1)
    assert y.shape == (1, NUM_CLASSES)
    assert torch.isfinite(y).all()


def test_resnet18_stem_depends_on_input_size():
    small = build_model("resnet18", (3, 64, 64), NUM_CLASSES)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    large = build_model("resnet18", (3, 96, 96), NUM_CLASSES)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    assert isinstance(large.maxpool, nn.MaxPool2d)
    for model, shape in ((small, (3, 64, 64)), (large, (3, 96, 96))):
        assert _forward(model, shape).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg11", "alexnet"])
def test_first_conv_takes_input_channels(name):
    model = build_model(name, (1, 32, 32), NUM_CLASSES)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1


def test_vit_patch_size_and_channels():
    assert [vit_patch_size(s) for s in (224, 96, 64, 32, 28, 8)] == [16, 16, 16, 4, 4, 2]
    torch.manual_seed(0)
    model = build_model("vit_b_16", (1, 8, 8), NUM_CLASSES)
    assert model.conv_proj.in_channels == 1 and model.conv_proj.kernel_size == (2, 2)
    assert model.hidden_dim == 768 and len(model.encoder.layers) == 12


def test_vit_requires_square_input():
    with pytest.raises(ModelError, match="square"):
        build_model("vit_b_16", (3, 32, 28), NUM_CLASSES)


@pytest.mark.parametrize("name", list(MODELS))
def test_same_seed_same_parameters(name):
    shape = (3, 32, 32)
    torch.manual_seed(123)
    a = build_model(name, shape, NUM_CLASSES)
    torch.manual_seed(123)
    b = build_model(name, shape, NUM_CLASSES)
    torch.testing.assert_close(a.state_dict(), b.state_dict(), rtol=0, atol=0)


def test_different_seed_different_parameters():
    torch.manual_seed(1)
    a = build_model("cnn", (1, 8, 8), NUM_CLASSES)
    torch.manual_seed(2)
    b = build_model("cnn", (1, 8, 8), NUM_CLASSES)
    assert not torch.equal(a.features[0].weight, b.features[0].weight)


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_small_models_have_no_batch_dependent_layers(name):
    model = build_model(name, (1, 8, 8), NUM_CLASSES)
    banned = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)
    assert not any(isinstance(m, banned) for m in model.modules())


@pytest.mark.parametrize("name", ["cnn", "mlp"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_small_models_are_per_sample_independent(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, NUM_CLASSES)
    model.train()  # independence must hold in training mode, where BSP gradients are computed
    x = torch.randn(6, *shape)
    with torch.no_grad():
        full = model(x)
        for i in range(x.shape[0]):
            torch.testing.assert_close(full[i : i + 1], model(x[i : i + 1]))


def test_unknown_name_lists_choices():
    with pytest.raises(ModelError) as err:
        build_model("foo", (1, 8, 8), NUM_CLASSES)
    msg = str(err.value)
    assert msg.startswith("model.name='foo' is not a model; choose one of: alexnet, bncnn, cnn, ")
    assert "\n" not in msg
    for name in MODELS:
        assert name in msg
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("bad", [(8, 8), (1, 0, 8), (1, 8.0, 8)])
def test_bad_input_shape_rejected(bad):
    with pytest.raises(ModelError, match="input_shape"):
        build_model("cnn", bad, NUM_CLASSES)


def test_bad_num_classes_rejected():
    with pytest.raises(ModelError, match="num_classes"):
        build_model("cnn", (1, 8, 8), 0)


@pytest.mark.parametrize("name,shape", [("cnn", (1, 8, 8)), ("resnet18", (3, 32, 32))])
def test_backward_reaches_every_parameter(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, NUM_CLASSES)
    model.train()
    x = torch.randn(4, *shape)
    target = torch.arange(4) % NUM_CLASSES
    nn.functional.cross_entropy(model(x), target).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name,default_kind", [("cnn", None), ("bncnn", torch.nn.BatchNorm2d),
                                                ("resnet18", torch.nn.BatchNorm2d)])
def test_model_norm_puts_the_chosen_layer_after_every_conv(name, default_kind):
    """model.norm: every conv is followed by the chosen normalisation (counted against the convs), and a
    GroupNorm model's output for one sample does not depend on the rest of the batch (a BatchNorm
    model's does, in train mode): the property that decides what BSP computes."""
    def count(model, kind):
        return sum(isinstance(m, kind) for m in model.modules())

    torch.manual_seed(0)
    convs = count(build_model(name, (3, 16, 16), 10), torch.nn.Conv2d)
    kinds = {"batch": torch.nn.BatchNorm2d, "group": torch.nn.GroupNorm}
    for norm, kind in kinds.items():
        model = build_model(name, (3, 16, 16), 10, norm)
        other = kinds["group" if norm == "batch" else "batch"]
        assert count(model, kind) == convs and count(model, other) == 0
    plain = build_model(name, (3, 16, 16), 10, "none")
    assert count(plain, torch.nn.BatchNorm2d) + count(plain, torch.nn.GroupNorm) == 0
    default = build_model(name, (3, 16, 16), 10)
    assert (count(default, default_kind) == convs) if default_kind else count(default, torch.nn.BatchNorm2d) == 0
    x = torch.randn(6, 3, 16, 16)
    for norm, batch_dependent in (("group", False), ("batch", True)):
        torch.manual_seed(1)
        model = build_model(name, (3, 16, 16), 10, norm).train()
        alone, together = model(x[:1]), model(x)[:1]
        assert torch.allclose(alone, together, atol=1e-5) != batch_dependent


def test_model_norm_is_refused_for_models_that_keep_their_own():
    with pytest.raises(ModelError, match="model.norm='group'"):
        build_model("vgg11", (3, 32, 32), 10, "group")
    with pytest.raises(ModelError, match="no conv layer"):
        build_model("mlp", (1, 8, 8), 10, "batch")


def test_bncnn_width_multiplies_its_channels_and_hidden_units():
    """model.width = 2: 32/64/128 channels and 128 hidden units, i.e. the parameter count of the layers
    written out by hand here."""
    from lbfl_mpi.models import build_model

    m = build_model("bncnn", (1, 28, 28), 10, width=2)
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128]
    want = (9 * 1 * 32 + 9 * 32 * 64 + 9 * 64 * 128) + 2 * (32 + 64 + 128) + (128 * 4 * 128 + 128) + (128 * 10 + 10)
    assert sum(p.numel() for p in m.parameters()) == want
    assert sum(p.numel() for p in build_model("bncnn", (1, 28, 28), 10).parameters()) < want / 3
    x = torch.randn(4, 1, 28, 28)
    assert m(x).shape == (4, 10)


def test_width_is_refused_for_other_models():
    from lbfl_mpi.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"model\.width=2: applies to model\.name='bncnn', not 'cnn'"):
        load_config(None, ["model.name=cnn", "model.width=2"])
