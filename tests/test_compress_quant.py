"""Quantization recipes on the digits CNN: real PT2E quantization, real .pte artifacts, real runs."""

from __future__ import annotations

import math

import pytest
import torch

import edgeprobe
from edgeprobe.compress import Context, Dataset, apply, canonical, parse
from edgeprobe.compress import data as D
from edgeprobe.compress.fidelity import evaluate, sqnr_db
from edgeprobe.compress.quantize import RANDOM_CALIBRATION_WARNING, _scales
from edgeprobe.compress.sweep import split_recipes
from edgeprobe.errors import UsageError
from edgeprobe.lower import lower
from edgeprobe.models import ModelSpec
from edgeprobe.models.zoo import DigitsCNN


@pytest.fixture(scope="module")
def digits():
    splits = D.digits()
    torch.manual_seed(0)
    model = D.train_classifier(DigitsCNN(), splits.train, epochs=8)
    return model, splits


def _ctx(splits, **kw) -> Context:
    return Context(example_inputs=(splits.test.x[:1],), **{"calibration": splits.train, "train": splits.train, **kw})


def _lowered(model, splits, recipe, **ctx_kw):
    comp = apply(model, recipe, _ctx(splits, **ctx_kw))
    spec = ModelSpec("digits_cnn", (splits.test.x[:1],), module=comp.module, exported=comp.exported)
    import dataclasses

    art = lower(spec, recipe=comp.recipe, compression=[dataclasses.asdict(s) for s in comp.steps],
                quantized=comp.quantized)
    return comp, art


def test_int8_is_3x_smaller_within_2_points_and_runs_on_the_device(digits, native_runner):
    model, splits = digits
    _, fp32 = _lowered(model, splits, "fp32")
    comp, q = _lowered(model, splits, "int8")
    assert fp32.manifest.artifact_size_bytes / q.manifest.artifact_size_bytes >= 3.0
    f_fp32 = evaluate(fp32.model_path, model, splits.test, (splits.test.x[:1],))
    f_q = evaluate(q.model_path, model, splits.test, (splits.test.x[:1],))
    assert f_fp32.accuracy - f_q.accuracy <= 0.02, (f_fp32, f_q)
    assert f_q.sqnr_db < f_fp32.sqnr_db and f_q.sqnr_db > 15  # int8 noise is real but bounded
    step = q.manifest.compression[0]
    assert step["recipe"] == "int8" and step["summary"]["calibration"] == "user"
    assert q.manifest.recipe == "int8:samples=256,per_channel=True"
    r = edgeprobe.bench(q, device="local", iterations=3, warmup=1)
    assert r.ok, r.run.error
    assert r.run.verification.passed


def test_missing_calibration_data_calibrates_on_random_inputs_loudly(digits):
    model, splits = digits
    logs: list[str] = []
    comp, art = _lowered(model, splits, "int8", calibration=None, log=logs.append)
    assert any(RANDOM_CALIBRATION_WARNING in m for m in logs)
    assert any(RANDOM_CALIBRATION_WARNING in n for n in art.manifest.compression[0]["notes"])
    assert art.manifest.compression[0]["summary"]["calibration"] == "random"
    bad = Dataset(torch.rand(4, 3, 8, 8))
    with pytest.raises(UsageError, match=r"samples of shape \(3, 8, 8\); the model takes \(1, 8, 8\)"):
        apply(model, "int8", _ctx(splits, calibration=bad))


def test_pow2_scales_are_powers_of_two(digits):
    model, splits = digits
    comp = apply(model, "pow2", _ctx(splits))
    scales = _scales(comp.exported)
    assert len(scales) > 10
    assert all(math.log2(s) == round(math.log2(s)) for s in scales)
    assert comp.steps[0].summary["exponents"] == sorted({round(math.log2(s)) for s in scales})


def test_weight_only_and_dynamic_lower_run_and_stay_close(digits, native_runner):
    model, splits = digits
    _, fp32 = _lowered(model, splits, "fp32")
    ref = evaluate(fp32.model_path, model, splits.test, (splits.test.x[:1],))
    for recipe in ("int8w", "int4w", "int8-dynamic"):
        comp, art = _lowered(model, splits, recipe)
        assert art.manifest.artifact_size_bytes < 0.5 * fp32.manifest.artifact_size_bytes, recipe
        f = evaluate(art.model_path, model, splits.test, (splits.test.x[:1],))
        assert ref.accuracy - f.accuracy <= 0.03, (recipe, f)
        r = edgeprobe.bench(art, device="local", iterations=2, warmup=0)
        assert r.ok and r.run.verification.passed, (recipe, r.run.error)


def test_qat_trains_through_the_fake_quant_graph(digits):
    model, splits = digits
    with pytest.raises(UsageError, match="qat needs a train function"):
        apply(model, "qat", _ctx(splits, train=None))
    seen = []

    def train_fn(prepared, data):  # the user's loop: one pass of SGD over 4 batches
        opt = torch.optim.SGD(prepared.parameters(), lr=1e-3)
        for i, (x, y) in enumerate(data.batches(64)):
            if i == 4:
                break
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(prepared(x), y)
            loss.backward()
            opt.step()
            seen.append(float(loss.detach()))

    comp = apply(model, "qat", _ctx(splits, train_fn=train_fn))
    assert len(seen) == 4 and comp.quantized and comp.steps[0].summary["training"] == "user train_fn"
    acc = D.accuracy(lambda x: torch.cat([comp.forward(x[i:i + 1]) for i in range(len(x))]), splits.test)
    assert acc >= D.accuracy(model, splits.test) - 0.03


def test_recipe_strings_are_checked_with_helpful_messages():
    with pytest.raises(UsageError, match=r"(?s)unknown recipe 'int9'.*valid recipes:.*int8\[:samples=256"):
        parse("int9")
    with pytest.raises(UsageError, match="unknown parameter 'bits'"):
        parse("magnitude:bits=3")
    with pytest.raises(UsageError, match="sparsity must be a float"):
        parse("magnitude:lots")
    with pytest.raises(UsageError, match="must come last"):
        parse("int8+channel:0.3")
    with pytest.raises(UsageError, match="at most one quantization step"):
        parse("int8+int8w")
    assert canonical("channel:0.3+int8") == "channel:ratio=0.3,finetune=0+int8:samples=256,per_channel=True"
    assert canonical("fp32") == "fp32"
    assert split_recipes("fp32,int8,distill:T=4,alpha=0.5,channel:0.3+int8") == [
        "fp32", "int8", "distill:T=4,alpha=0.5", "channel:0.3+int8"]


def test_fidelity_numbers_come_from_the_artifacts_real_outputs(digits):
    ref = torch.ones(100)
    assert sqnr_db(ref, ref + 0.1) == pytest.approx(20.0)  # signal 100, noise 1
    assert sqnr_db(ref, ref) == math.inf
    model, splits = digits
    _, art = _lowered(model, splits, "int8")
    data = Dataset(splits.test.x[:40], splits.test.y[:40])
    f = evaluate(art.model_path, model, data, (splits.test.x[:1],))
    # Recompute independently with the ExecuTorch runtime.
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(art.model_path)).load_method("forward")
    out = torch.cat([method.execute([data.x[i:i + 1]])[0] for i in range(40)])
    with torch.no_grad():
        want = model(data.x)
    assert f.samples == 40
    assert f.sqnr_db == pytest.approx(sqnr_db(want, out), rel=1e-4)
    assert f.max_abs_error == pytest.approx(float((want - out).abs().max()), rel=1e-4)  # eager batch 40 vs 1
    assert f.top1_agreement == pytest.approx(float((want.argmax(1) == out.argmax(1)).double().mean()))
    assert f.accuracy == pytest.approx(float((out.argmax(1) == data.y).double().mean()))
