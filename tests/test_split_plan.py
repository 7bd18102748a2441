"""plan_split end to end on loopback: real per-operator ETDump costs from the local device, a real
`edgeprobe serve` process, every candidate run end to end (head .pte on the device-side split client,
tail on the server), regret and prediction error reported."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from edgeprobe.errors import UsageError
from edgeprobe.split import parse_rate_bps, parse_time_ms, plan_split

TOKEN = "split-test-token"


class SkipNet(nn.Module):
    """A residual block and a two-branch head: a DAG, not a chain."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        z = torch.relu(self.b(torch.relu(self.a(y))) + y)
        return self.fc(self.pool(z).flatten(1))


@pytest.fixture(scope="module")
def tail_server():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "edgeprobe", "serve", "--host", "127.0.0.1", "--port", "0",
                          "--token", TOKEN, "--threads", "1"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = json.loads(p.stdout.readline())
        yield line["listening"]
    finally:
        p.terminate()
        p.wait(timeout=30)


def test_units_parse():
    assert parse_rate_bps("5.85mbit") == pytest.approx(5.85e6)
    assert parse_rate_bps("800kbit") == pytest.approx(8e5)
    assert parse_time_ms("40ms") == 40 and parse_time_ms("0.03s") == pytest.approx(30)
    with pytest.raises(UsageError, match="bandwidth"):
        parse_rate_bps("fast")


def test_plan_and_verify_every_candidate_on_a_dag(tail_server, native_runner, tmp_path):
    torch.manual_seed(0)
    plan = plan_split(SkipNet().eval(), input_shape=(1, 3, 16, 16), server=f"tcp:{tail_server}", token=TOKEN,
                      uplink="50mbit", downlink="50mbit", rtt="1ms", iterations=5, warmup=1, verify=True)
    rows = plan.candidates
    kinds = {r.kind for r in rows}
    assert {"device-only", "cloud-only", "split"} <= kinds
    assert all(r.error is None for r in rows), [r.error for r in rows if r.error]
    assert all(r.measured_e2e_p50_ms is not None and r.measured_e2e_p50_ms > 0 for r in rows)
    assert all(r.sqnr_db > 100 for r in rows)  # fp32 everywhere: split outputs equal the unsplit model
    assert plan.regret is not None and plan.regret >= 1.0
    assert plan.best_measured in {r.label for r in rows}
    assert plan.per_message_overhead_bytes > 0  # measured against the server
    assert plan.request_overhead_ms > 0  # measured: the server's handling + the client's codec of an echo
    assert all(r.predicted_overhead_ms == plan.request_overhead_ms for r in rows if r.kind != "device-only")
    # confirmation: the heads of the 3 best-predicted splits (and the chosen one) timed on the device, and
    # the choice is the best total with those measured heads
    confirmed = [r for r in rows if r.confirmed_total_ms is not None]
    assert len([r for r in confirmed if r.kind == "split"]) >= min(3, sum(r.kind == "split" for r in rows))
    assert all(r.measured_head_ms > 0 for r in confirmed if r.kind != "cloud-only")
    for r in confirmed:
        assert r.confirmed_total_ms == pytest.approx(r.predicted_total_ms - r.predicted_device_ms + r.measured_head_ms)
    assert plan.chosen.confirmed_total_ms == min(r.confirmed_total_ms for r in confirmed)
    # predictions are what the components say
    for r in rows:
        parts = (r.predicted_device_ms + r.predicted_uplink_ms + r.predicted_server_ms + r.predicted_downlink_ms
                 + r.predicted_rtt_ms + r.predicted_overhead_ms)
        assert r.predicted_total_ms == pytest.approx(parts)
    data = json.loads(plan.to_json())
    assert data["schema_version"] == 2 and data["chosen"]["label"] == plan.chosen.label
    assert plan.policy and plan.policy[0][0] <= plan.uplink_bps


def test_cli_split_prints_plan_and_policy(tmp_path, native_runner):
    out = tmp_path / "plan.json"
    p = subprocess.run([sys.executable, "-m", "edgeprobe", "split", "tiny_cnn", "--uplink", "1.1mbit", "--rtt", "40ms",
                        "--iterations", "3", "--warmup", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "220"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "policy" in p.stdout and "device-only" in p.stdout and "predicted" in p.stdout
    plan = json.loads(out.read_text())
    assert plan["server"] is None and "this host" in plan["cost_sources"]["server"]
    assert math.isclose(plan["uplink_bps"], 1.1e6)


def test_bad_requests_are_refused_clearly():
    with pytest.raises(UsageError, match="--verify .* needs --server"):
        plan_split("tiny_cnn", verify=True)
    with pytest.raises(UsageError, match="encoding"):
        plan_split("tiny_cnn", encoding="bf8")
    with pytest.raises(UsageError, match="per-operator device energy meter"):
        plan_split("tiny_cnn", objective="energy")
