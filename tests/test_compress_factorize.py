"""Low-rank factorization (``lowrank``) and k-means weight sharing (``cluster``) on the digits CNN.

Numbers measured when these bounds were set (2 CPU cores, DigitsCNN trained 15 epochs, 359 test
images, one image = 0.28 points): fp32 98.9 %; lowrank:0.5 90.8 % (no fine-tuning; params
38282 -> 21865, relative weight error max 0.54 / mean 0.35); lowrank:0.75 98.1 %; cluster:16 99.7 %,
cluster:8 98.3 %, cluster:4 95.3 %.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from edgeprobe.compress import Context, apply, count_params
from edgeprobe.compress.data import accuracy, digits, train_classifier
from edgeprobe.compress.factorize import factorize_conv2d, factorize_linear
from edgeprobe.errors import UsageError
from edgeprobe.models.zoo import DigitsCNN

X = (torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1)),)


def ctx() -> Context:
    return Context(example_inputs=X)


@pytest.fixture(scope="module")
def splits():
    return digits()


@pytest.fixture(scope="module")
def trained(splits):
    torch.manual_seed(0)
    model = train_classifier(DigitsCNN(), splits.train)
    return model, accuracy(model, splits.test)


def _weights(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


# ------------------------------------------------------------------------------------------ lowrank


def test_lowrank_half_rank_reduces_params_and_reports_accuracy(trained, splits):
    model, fp32_acc = trained
    c = apply(model, "lowrank:0.5", ctx())
    step = c.steps[0]
    assert step.recipe == "lowrank" and step.params == {"rank": 0.5, "min_saving": 0.0}
    s = step.summary
    assert s["params_before"] == count_params(model) == 38282
    assert s["params_after"] == count_params(c.module) < s["params_before"]
    assert s["layers_factorized"] == 4 and s["layers_skipped"] == 0
    # Linear(512, 64) at half rank: Linear(512, 32, bias=False) -> Linear(32, 64).
    fc = c.module.body[6]
    assert isinstance(fc, nn.Sequential) and [tuple(l.weight.shape) for l in fc] == [(32, 512), (64, 32)]
    assert fc[0].bias is None and fc[1].bias is not None
    conv = c.module.body[2]  # Conv2d(16, 32, 3): weight (32, 144), rank 16
    assert tuple(conv[0].weight.shape) == (16, 16, 3, 3) and tuple(conv[1].weight.shape) == (32, 16, 1, 1)
    assert 0 < s["rel_error_mean"] <= s["rel_error_max"] < 1
    assert set(s["per_layer"]) == {"body.0", "body.2", "body.6", "body.8"}
    acc = accuracy(c.module, splits.test)
    print(f"fp32 {fp32_acc:.3f}  lowrank:0.5 {acc:.3f}  params {s['params_before']} -> {s['params_after']}")
    # Measured 0.908 without fine-tuning; 0.8 catches a broken factorization (chance is 0.1) and
    # leaves room for training noise. The original model is untouched.
    assert acc > 0.8
    assert count_params(model) == 38282 and isinstance(model.body[6], nn.Linear)
    # At three quarters of the rank the accuracy is back within a few points (measured -0.8).
    assert accuracy(apply(model, "lowrank:0.75", ctx()).module, splits.test) >= fp32_acc - 0.03


def test_full_rank_factorization_is_exact(trained):
    model, _ = trained
    for name, layer in _weights(model):
        full = min(layer.weight.shape[0], layer.weight[0].numel())
        seq, err = (factorize_linear if isinstance(layer, nn.Linear) else factorize_conv2d)(layer, full)
        assert err < 1e-6, name
        swapped = copy.deepcopy(model)
        parent, _, attr = name.rpartition(".")
        setattr(swapped.get_submodule(parent), attr, seq)
        with torch.no_grad():
            torch.testing.assert_close(swapped(X[0]), model(X[0]), rtol=0, atol=1e-4)


def _low_rank(out: int, inp: int, r: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(out, r, generator=g) @ torch.randn(r, inp, generator=g) / inp


def test_lowrank_exact_when_weights_have_that_rank():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    with torch.no_grad():
        model[0].weight.copy_(_low_rank(8, 9, 2, g).reshape(8, 1, 3, 3))
        model[3].weight.copy_(_low_rank(64, 512, 4, g))
        model[5].weight.copy_(_low_rank(10, 64, 3, g))
    c = apply(model, "lowrank:4", ctx())
    s = c.steps[0].summary
    assert s["layers_factorized"] == 3 and s["rel_error_max"] < 1e-5
    assert {v["rank"] for v in s["per_layer"].values()} == {4}
    with torch.no_grad():
        torch.testing.assert_close(c.module(X[0]), model(X[0]), rtol=0, atol=1e-4)
    # min_saving: the conv (8x9 weights -> 4x(9+8) = 68) saves only 6 %, so it is kept and listed.
    c = apply(model, "lowrank:rank=4,min_saving=0.5", ctx())
    assert c.steps[0].summary["layers_factorized"] == 2
    assert isinstance(c.module[0], nn.Conv2d) and "0 (rank 4/8" in c.steps[0].notes[0]


def test_lowrank_skips_layers_without_saving_and_grouped_convs(trained):
    model, _ = trained
    c = apply(model, "lowrank:1000", ctx())  # full rank everywhere: never a saving
    s = c.steps[0].summary
    assert s["layers_factorized"] == 0 and s["params_after"] == s["params_before"]
    assert all(f"body.{i} (rank" in c.steps[0].notes[0] for i in (0, 2, 6, 8))
    dw = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3, groups=8)).eval()
    c = apply(dw, "lowrank:0.5", ctx())
    assert isinstance(c.module[1], nn.Conv2d)
    assert any(n.startswith("grouped/depthwise Conv2d not factorized: 1") for n in c.steps[0].notes)
    shared = nn.Linear(16, 16)
    twice = nn.Sequential(shared, nn.ReLU(), shared).eval()  # one module at two places
    c = apply(twice, "lowrank:0.25", Context(example_inputs=(torch.rand(1, 16),)))
    assert c.module[0] is c.module[2] and isinstance(c.module[0], nn.Sequential)
    assert c.steps[0].summary["layers_factorized"] == 1
    for bad in ("lowrank:0", "lowrank:-1", "lowrank:rank=0.5,min_saving=1", "lowrank:x"):
        with pytest.raises(UsageError):
            apply(dw, bad, ctx())


def test_lowrank_exports_and_lowers_with_the_saving_in_the_pte(trained, tmp_path):
    from edgeprobe.lower import lower
    from edgeprobe.models import ModelSpec

    model, _ = trained
    c = apply(model, "lowrank:0.5", ctx())
    ep = torch.export.export(c.module, X)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(*X), c.module(*X))
    art = lower(ModelSpec(ref="digits_cnn[lowrank:0.5]", example_inputs=X, module=c.module),
                recipe=c.recipe, use_cache=False, out_dir=tmp_path / "lowrank")
    size = art.manifest.artifact_size_bytes
    s = c.steps[0].summary
    # The .pte holds the factorized fp32 weights (measured 94120 bytes for 21865 params; fp32 model
    # 157992 bytes for 38282), so it is smaller than the original weights alone.
    assert 4 * s["params_after"] <= size < 4 * s["params_after"] + 32 * 1024
    assert size < 0.75 * 4 * s["params_before"]


def test_lowrank_resnet18_forward_and_export():
    import torchvision  # a dependency of edgeprobe: missing is an error, not a skip

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = (torch.rand(1, 3, 32, 32),)
    c = apply(model, "lowrank:0.5", Context(example_inputs=x))
    s = c.steps[0].summary
    assert s["layers_factorized"] == 21 and s["params_after"] < 0.6 * s["params_before"]
    assert c.forward(*x).shape == (1, 1000)
    ep = torch.export.export(c.module, x)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(*x), c.module(*x))


# ------------------------------------------------------------------------------------------ cluster


def test_cluster_shares_k_values_per_layer_and_keeps_accuracy(trained, splits):
    model, fp32_acc = trained
    c = apply(model, "cluster", ctx())
    s = c.steps[0].summary
    assert c.steps[0].params == {"k": 16} and s["k"] == 16 and s["layers_clustered"] == 4
    for name, layer in _weights(c.module):
        assert torch.unique(layer.weight).numel() <= 16, name
        orig = model.get_submodule(name)
        assert torch.equal(layer.bias, orig.bias)  # biases are not clustered
        assert not torch.equal(layer.weight, orig.weight)
    assert s["distinct_values_max"] == 16
    assert s["storage_bytes_if_packed"] < s["fp32_bytes"] == 4 * count_params(model)
    assert any("storage_bytes_if_packed is computed" in n for n in c.steps[0].notes)
    acc = accuracy(c.module, splits.test)
    print(f"fp32 {fp32_acc:.3f}  cluster:16 {acc:.3f}  bytes {s['fp32_bytes']} -> {s['storage_bytes_if_packed']}")
    # Measured +0.8 points (99.7 vs 98.9): 16 shared values per layer keep this CNN's accuracy; 2 points
    # is the bound the issue sets for int8, which stores 256 values per tensor.
    assert acc >= fp32_acc - 0.02
    c4 = apply(model, "cluster:4", ctx())
    assert all(torch.unique(l.weight).numel() <= 4 for _, l in _weights(c4.module))
    ep = torch.export.export(c.module, X)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(*X), c.module(*X))


def test_cluster_packed_size_matches_hand_computation():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(10, 3))
    s = apply(lin, "cluster:4", ctx()).steps[0].summary
    # 30 weights x 2 bits = 60 bits -> 8 bytes, codebook 4 x 4 bytes, bias 3 x 4 bytes.
    assert s["storage_bytes_if_packed"] == math.ceil(30 * 2 / 8) + 4 * 4 + 3 * 4 == 36
    assert s["fp32_bytes"] == 33 * 4
    conv = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)).eval()
    s = apply(conv, "cluster:k=8", ctx()).steps[0].summary
    # 54 weights x 3 bits -> 21 bytes + 8 x 4 codebook + conv bias 12 + BatchNorm weight, bias, running
    # mean and var 4 x 3 x 4 (num_batches_tracked is an integer counter, not a weight).
    assert s["storage_bytes_if_packed"] == math.ceil(54 * 3 / 8) + 8 * 4 + 3 * 4 + 4 * 3 * 4 == 113
    for bad in ("cluster:1", "cluster:abc"):
        with pytest.raises(UsageError):
            apply(lin, bad, ctx())
