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


FORWARD = """
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) * {k}


def make():
    return Net(), (torch.ones(1, 4),)
"""


def test_editing_forward_changes_the_cache_key_and_the_artifact(tmp_path):
    """The key hashed class name, repr and weights: an edited forward() reused the old .pte."""
    from edgeprobe.api import export
    from edgeprobe.lower import _run_pte

    src = tmp_path / "net.py"
    src.write_text(FORWARD.format(k=2))
    two = load_model(f"{src}:make")
    art_two = export(f"{src}:make")
    src.write_text(FORWARD.format(k=3))  # same file, same class, same weights: only forward differs
    three = load_model(f"{src}:make")
    assert repr(two.module) == repr(three.module)
    assert two.fingerprint() != three.fingerprint()
    art_three = export(f"{src}:make")
    assert not art_three.cached and art_three.dir != art_two.dir
    x = (torch.ones(1, 4),)
    out_two, out_three = _run_pte(art_two.model_path, x)[0], _run_pte(art_three.model_path, x)[0]
    torch.testing.assert_close(out_three, out_two * 1.5)
    torch.testing.assert_close(out_three, three.eager_outputs(x)[0], rtol=1e-5, atol=1e-6)
    assert load_model(f"{src}:make").fingerprint() == three.fingerprint()  # repeatable


def test_unexportable_module_is_keyed_on_its_source(tmp_path):
    """A forward torch.export cannot trace (data-dependent branch) still gets a key that follows its code."""
    body = """
import torch


class Branchy(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * {k}
        return x


def make():
    return Branchy(), (torch.ones(1, 4),)
"""
    src = tmp_path / "branchy.py"
    src.write_text(body.format(k=2))
    a = load_model(f"{src}:make")
    with pytest.raises(Exception):
        a.program()
    src.write_text(body.format(k=3))
    b = load_model(f"{src}:make")
    assert a.fingerprint() != b.fingerprint()
    assert b.fingerprint() == load_model(f"{src}:make").fingerprint()


def test_the_key_export_is_the_lowered_export():
    """The module is exported once per spec: the cache key and ExecuTorch lower the same program."""
    spec = load_model("tiny_cnn")
    ep = spec.program()
    assert spec.program() is ep
    before = spec.fingerprint()
    assert spec.program() is ep and spec.fingerprint() == before
