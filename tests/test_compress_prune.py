"""Pruning (magnitude, taylor, channel) and distillation recipes on the digits CNN, through the real
recipe parser (``edgeprobe.compress.apply``)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edgeprobe.compress import Context, Dataset, apply, count_params
from edgeprobe.compress.data import accuracy, digits, train_classifier
from edgeprobe.errors import UsageError
from edgeprobe.models.zoo import DigitsCNN

EXAMPLE = (torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two threads on two busy cores are slower than one for these tiny models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def splits():
    return digits()


@pytest.fixture(scope="module")
def trained(splits, one_thread):
    torch.manual_seed(0)
    model = train_classifier(DigitsCNN(), splits.train, epochs=5)
    acc = accuracy(model, splits.test)
    assert acc > 0.9, acc
    return model


def ctx(splits, **kw) -> Context:
    return Context(example_inputs=EXAMPLE, train=splits.train, **kw)


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def sparsity(model: nn.Module) -> float:
    ws = weights(model)
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


# --- unstructured ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0.5, 0.8])
def test_magnitude_hits_target_sparsity(trained, splits, target):
    out = apply(trained, f"magnitude:{target}", ctx(splits))
    step = out.steps[0]
    assert step.recipe == "magnitude" and step.params["sparsity"] == target
    assert abs(sparsity(out.module) - target) < 0.01
    assert abs(step.summary["sparsity"] - target) < 0.01
    assert step.summary["params"] == count_params(trained)
    assert step.summary["nonzero_params"] < step.summary["params"] * (1 - target) + 200  # + biases
    assert any("no speed-up" in n for n in step.notes)
    assert sparsity(trained) == 0.0  # the input model is untouched
    # the smallest weights went: every surviving weight is at least as large as every zeroed one
    before = torch.cat([w.detach().flatten() for w in weights(trained)])
    after = torch.cat([w.detach().flatten() for w in weights(out.module)])
    zeroed = after == 0
    assert before[zeroed].abs().max() <= before[~zeroed].abs().min()
    print(f"magnitude:{target} sparsity={step.summary['sparsity']:.4f} "
          f"nonzero={step.summary['nonzero_params']}/{step.summary['params']} "
          f"test acc={accuracy(out.module, splits.test):.3f}")


def test_magnitude_threshold_zeroes_exactly_the_small_weights(trained, splits):
    theta = 0.05
    out = apply(trained, f"magnitude:threshold={theta}", ctx(splits))
    for w0, w1 in zip(weights(trained), weights(out.module), strict=True):
        small = w0.detach().abs() < theta
        assert torch.equal(w1[small], torch.zeros_like(w1[small]))
        assert torch.equal(w1.detach()[~small], w0.detach()[~small])
    expected = sum(int((w.abs() < theta).sum()) for w in weights(trained)) / sum(w.numel() for w in weights(trained))
    assert out.steps[0].summary["sparsity"] == pytest.approx(expected)
    print(f"magnitude:threshold={theta} sparsity={expected:.4f}")


def test_magnitude_finetune_keeps_mask(trained, splits):
    out = apply(trained, "magnitude:sparsity=0.7,finetune=1", ctx(splits))
    assert abs(sparsity(out.module) - 0.7) < 0.01
    assert "finetune" in out.steps[0].summary
    assert accuracy(out.module, splits.test) > 0.8


def test_taylor_hits_sparsity(trained, splits):
    out = apply(trained, "taylor:0.5", ctx(splits))
    s = out.steps[0].summary
    assert abs(sparsity(out.module) - 0.5) < 0.01 and abs(s["sparsity"] - 0.5) < 0.01
    assert s["batches"] == 8
    assert any("no speed-up" in n for n in out.steps[0].notes)
    # a different criterion than magnitude: not the same set of zeros
    mag = apply(trained, "magnitude:0.5", ctx(splits))
    assert any(not torch.equal(a == 0, b == 0) for a, b in zip(weights(out.module), weights(mag.module), strict=True))
    print(f"taylor:0.5 sparsity={s['sparsity']:.4f} test acc={accuracy(out.module, splits.test):.3f}")


def test_taylor_needs_labelled_data(trained):
    with pytest.raises(UsageError, match="taylor needs labelled training data"):
        apply(trained, "taylor:0.5", Context(example_inputs=EXAMPLE))
    with pytest.raises(UsageError, match="taylor needs labelled training data"):
        apply(trained, "taylor:0.5", Context(example_inputs=EXAMPLE, train=Dataset(torch.rand(8, 1, 8, 8))))


def test_finetune_without_data_is_a_usage_error(trained):
    with pytest.raises(UsageError, match="finetune=2 needs labelled training data"):
        apply(trained, "magnitude:sparsity=0.5,finetune=2", Context(example_inputs=EXAMPLE))


def test_finetune_uses_train_fn(trained):
    calls = []
    out = apply(trained, "channel:ratio=0.3,finetune=1",
                Context(example_inputs=EXAMPLE, train_fn=lambda m, d: calls.append((m, d))))
    assert len(calls) == 1 and calls[0][0] is out.module and out.steps[0].summary["finetune"] == "train_fn"


# --- structured -----------------------------------------------------------------------------------


def _digits_params(k1: float, k2: float, k3: float) -> float:
    """Parameters of DigitsCNN with k1/k2/k3 output channels in conv1/conv2/fc1 (fc2 keeps 10)."""
    return (k1 * 9 + k1) + (k2 * k1 * 9 + k2) + (16 * k2 * k3 + k3) + (k3 * 10 + 10)


def _digits_macs(k1: float, k2: float, k3: float) -> float:
    """Conv/Linear multiply-accumulates of DigitsCNN (8x8 convs, 4x4 after the pool)."""
    return 64 * k1 * 9 + 64 * k2 * k1 * 9 + 16 * k2 * k3 + k3 * 10


def test_channel_shrinks_params_and_macs_by_the_ratio(trained, splits):
    import torch_pruning as tp

    ratio = 0.3
    out = apply(trained, f"channel:{ratio}", ctx(splits))
    model, s = out.module, out.steps[0].summary
    layers = weights(model)
    # every prunable layer lost `ratio` of its outputs, up to one channel of rounding; the classifier kept 10
    full = (16, 32, 64)
    kept = tuple(w.shape[0] for w in layers[:3])
    for k, c in zip(kept, full, strict=True):
        assert abs(k - c * (1 - ratio)) <= 1, (kept, full)
    assert layers[3].shape[0] == 10
    # the summary agrees with the model and with torch-pruning's own count
    macs, params = tp.utils.count_ops_and_params(model, EXAMPLE)
    assert s["params_after"] == params == count_params(model) == _digits_params(*kept)
    assert s["macs_after"] == macs
    assert s["params_before"] == count_params(trained)
    # reduction: (1 - ratio)^2 for conv-conv / linear-linear, within a layer's rounding
    lo = [math.floor(c * (1 - ratio)) for c in full]
    hi = [math.ceil(c * (1 - ratio)) for c in full]
    assert _digits_params(*lo) / s["params_before"] <= s["params_ratio"] <= _digits_params(*hi) / s["params_before"]
    full_macs = _digits_macs(*full)
    assert _digits_macs(*lo) / full_macs - 0.02 <= s["macs_ratio"] <= _digits_macs(*hi) / full_macs + 0.02
    assert s["params_ratio"] == pytest.approx((1 - ratio) ** 2, abs=0.05)
    assert s["macs_ratio"] == pytest.approx((1 - ratio) ** 2, abs=0.05)
    # same output shape, exports, accuracy is reported
    assert model(*EXAMPLE).shape == trained(*EXAMPLE).shape == (1, 10)
    ep = torch.export.export(model, EXAMPLE)
    assert torch.allclose(ep.module()(*EXAMPLE), model(*EXAMPLE), atol=1e-5)
    acc, acc0 = accuracy(model, splits.test), accuracy(trained, splits.test)
    assert acc > 0.5
    print(f"channel:{ratio} params {s['params_before']}->{s['params_after']} ({s['params_ratio']:.3f}) "
          f"MACs {s['macs_before']}->{s['macs_after']} ({s['macs_ratio']:.3f}) kept={kept} "
          f"test acc {acc0:.3f}->{acc:.3f}")


def test_channel_on_mobilenet_v2():
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    net = mobilenet_v2(weights=None, num_classes=10).eval()
    ex = (torch.rand(1, 3, 64, 64),)
    out = apply(net, "channel:0.3", Context(example_inputs=ex))
    s = out.steps[0].summary
    assert s["params_after"] < 0.75 * s["params_before"] and s["macs_after"] < 0.75 * s["macs_before"]
    assert s["ignored_layers"] == ["Linear"]
    assert out.module.classifier[1].out_features == 10
    assert out.module(*ex).shape == (1, 10)
    torch.export.export(out.module, ex)
    print(f"mobilenet_v2 channel:0.3 params {s['params_before']}->{s['params_after']} ({s['params_ratio']:.3f}) "
          f"MACs {s['macs_before']}->{s['macs_after']} ({s['macs_ratio']:.3f})")


# --- distillation ---------------------------------------------------------------------------------


def test_distill_student_beats_untrained_student(trained, splits):
    out = apply(trained, "distill:epochs=4", ctx(splits))
    s = out.steps[0].summary
    student = out.module
    assert isinstance(student, DigitsCNN) and student.body[0].out_channels == 8
    assert s["student_params"] == count_params(student) < s["teacher_params"] == count_params(trained)
    assert "held-out" in s["accuracy_on"]
    assert s["student_accuracy"] > s["untrained_student_accuracy"] + 0.3
    assert s["student_accuracy"] > 0.85 and s["teacher_accuracy"] > 0.9
    test_student, test_teacher = accuracy(student, splits.test), accuracy(trained, splits.test)
    untrained = DigitsCNN(width=8)
    assert test_student > accuracy(untrained, splits.test) + 0.3
    print(f"distill teacher={s['teacher_accuracy']:.3f} student={s['student_accuracy']:.3f} "
          f"untrained={s['untrained_student_accuracy']:.3f} on {s['accuracy_on']}; "
          f"test split: teacher={test_teacher:.3f} student={test_student:.3f}; "
          f"params {s['teacher_params']}->{s['student_params']}")


def test_distill_uses_labelled_calibration_and_given_student(trained, splits):
    given = DigitsCNN(width=4)
    out = apply(trained, "distill:epochs=1,alpha=0.5", ctx(splits, calibration=splits.test, student=given))
    s = out.steps[0].summary
    assert s["accuracy_on"].startswith("calibration") and s["train_samples"] == len(splits.train)
    assert out.module is not given and out.module.body[0].out_channels == 4
    assert s["teacher_accuracy"] == pytest.approx(accuracy(trained, splits.test))


def test_distill_generic_student_is_pruned_and_reinitialized():
    from edgeprobe.compress.distill import make_student
    from edgeprobe.models.zoo import TinyCNN

    torch.manual_seed(0)
    teacher = TinyCNN().eval()
    student, how = make_student(teacher, 0.5, Context(example_inputs=(torch.rand(1, 3, 32, 32),)))
    assert "re-initialized" in how
    assert count_params(student) < 0.5 * count_params(teacher)
    assert student.head[2].out_features == 10
    assert student(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_distill_needs_labelled_data(trained):
    with pytest.raises(UsageError, match="distill needs labelled training data"):
        apply(trained, "distill", Context(example_inputs=EXAMPLE))
