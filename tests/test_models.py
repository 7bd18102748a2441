"""Model intake: names, factories, .pt2, weights, and the errors for bad input."""

from __future__ import annotations

import textwrap

import pytest
import torch

from edgeprobe.errors import InputShapeError, ModelNotFoundError, UsageError
from edgeprobe.models import load_model, parse_input_shape


def test_unknown_name_lists_close_matches():
    with pytest.raises(ModelNotFoundError, match=r"unknown model 'mobilenetv2'.*mobilenet_v2"):
        load_model("mobilenetv2")


def test_torchvision_name_is_seeded_and_repeatable():
    a, b = load_model("squeezenet1_0"), load_model("squeezenet1_0")
    assert a.fingerprint() == b.fingerprint()
    assert tuple(a.example_inputs[0].shape) == (1, 3, 224, 224)


def test_input_shape_override_and_wrong_shape():
    spec = load_model("tiny_cnn", input_shape=(2, 3, 16, 16))
    assert tuple(spec.example_inputs[0].shape) == (2, 3, 16, 16)
    with pytest.raises(InputShapeError, match=r"rejected example input \(1, 1, 8, 8\).*--input-shape"):
        load_model("tiny_cnn", input_shape=(1, 1, 8, 8))
    assert parse_input_shape("1x3x32x32") == (1, 3, 32, 32)
    with pytest.raises(InputShapeError):
        parse_input_shape("1,a")
    with pytest.raises(InputShapeError):
        parse_input_shape("0,3")


def test_factory_file(tmp_path):
    src = tmp_path / "net.py"
    src.write_text(textwrap.dedent("""
        import torch
        def make():
            return torch.nn.Linear(4, 2), (torch.randn(1, 4),)
        def bare():
            return torch.nn.Linear(4, 2)
    """))
    spec = load_model(f"{src}:make")
    assert spec.example_inputs[0].shape == (1, 4)
    assert load_model(f"{src}:bare", input_shape=(3, 4)).example_inputs[0].shape == (3, 4)
    with pytest.raises(ModelNotFoundError, match="Did you mean: make"):
        load_model(f"{src}:mak")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(f"{tmp_path}/nope.py:make")


def test_pt2_and_module_and_weights(tmp_path):
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    x = torch.randn(2, 4)
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(m, (x,)), str(path))
    spec = load_model(str(path))
    assert spec.exported is not None and spec.example_inputs[0].shape == (2, 4)
    torch.testing.assert_close(spec.eager_outputs((x,))[0], m(x))

    with pytest.raises(UsageError, match="example_inputs"):
        load_model(torch.nn.Linear(4, 3))
    w = tmp_path / "w.pt"
    torch.save(m.state_dict(), w)
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    spec = load_model(fresh, example_inputs=(x,), weights=w)
    torch.testing.assert_close(spec.eager_outputs((x,))[0], m(x))
    torch.save({"0.weight": torch.zeros(1)}, w)
    with pytest.raises(UsageError, match="do not fit"):
        load_model(torch.nn.Sequential(torch.nn.Linear(4, 3)), example_inputs=(x,), weights=w)
