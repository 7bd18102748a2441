"""The verify step: every candidate split run end to end (head on the device, tail on the server), measured."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from edgeprobe.devices.base import RECONNECT, REMOVE, SHELL
from edgeprobe.errors import TransportError
from edgeprobe.session import MeasureConfig, MeasureSession
from edgeprobe.split.device import Shared, session_for
from edgeprobe.split.record import CandidateRow

Progress = Callable[[str], None]


class _ClientProcess:
    """One ``edgeprobe_runner.split_client --jobs`` process for a whole sweep (it imports the runtime
    once instead of once per candidate); restarted after a crash or a timeout."""

    def __init__(self, tmp: Path, env: Optional[dict[str, str]] = None) -> None:
        self._err_path = tmp / "split_client.stderr"
        self._env = env  # the server's token goes in $EDGEPROBE_SPLIT_TOKEN, never on the argv
        self._proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "_ClientProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait(timeout=10)
            for pipe in (self._proc.stdin, self._proc.stdout):
                if pipe is not None:
                    pipe.close()
            self._proc = None

    def stderr_tail(self) -> str:
        try:
            lines = self._err_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return " | ".join(lines[-3:]) or "no output"

    def run(self, argv: list[str], timeout_s: float) -> None:
        import selectors

        if self._proc is None or self._proc.poll() is not None:
            self._stop()
            with open(self._err_path, "ab") as err:
                self._proc = subprocess.Popen([sys.executable, "-m", "edgeprobe_runner.split_client", "--jobs"],
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                              env=self._env)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(json.dumps(argv) + "\n")
            self._proc.stdin.flush()
        except OSError:
            self._stop()
            return
        sel = selectors.DefaultSelector()
        sel.register(self._proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout_s)
        sel.close()
        if not ready or not self._proc.stdout.readline():  # hung, or exited: the next job gets a fresh one
            self._stop()


class _NativeSplit:
    """The native runner's split mode (device_runner/PROTOCOL.md) on the session's device, over its
    transport: the runner measures the artifact as usual (load, output check), then times head ->
    network -> tail; the split's times and its outputs come back in three files next to the artifact.
    Every candidate runs through the one ``session`` (the device opened and the runner deployed once)."""

    def __init__(self, session: MeasureSession, threads: int = 0) -> None:
        self.session = session
        self.threads = threads

    @property
    def dev(self):
        return self.session.device

    @dev.setter
    def dev(self, device) -> None:  # a bare Device (tests build one around a transport): a session of its own
        self.session = MeasureSession(device)

    def run(self, art, extra: list[str], iterations: int, warmup: int, tmp: Path, k: int,
            token: Optional[str] = None) -> tuple[dict[str, Any], bytes, Optional[bytes]]:
        t = self.session.transport
        remote = f"{t.workdir}/{art.manifest.cache_key}/split-outputs.bin"
        with self._token_file(token, f"{t.workdir}/{art.manifest.cache_key}", tmp) as token_args:
            res = self.session.measure(art, MeasureConfig(warmup=warmup, iterations=iterations, timeout_s=600.0,
                                                          threads=self.threads),
                                       extra_args=[*extra, *token_args, "--split-outputs", remote])
        if not res.ok:
            err = res.run.error
            raise RuntimeError(f"{err.code}: {err.message}" if err else "the runner failed")
        files: dict[str, Optional[bytes]] = {}
        for suffix in (".json", "", ".tail"):
            local = tmp / f"native{k}{suffix or '.bin'}"
            try:
                t.pull(remote + suffix, local)
                files[suffix] = local.read_bytes()
            except Exception:  # noqa: BLE001 - device-only runs write no .tail
                files[suffix] = None
        if files[".json"] is None or files[""] is None:
            raise RuntimeError(f"the runner wrote no split record at {remote}.json")
        return json.loads(files[".json"]), files[""] or b"", files[".tail"]

    @contextlib.contextmanager
    def _token_file(self, token: Optional[str], remote_dir: str, tmp: Path):
        """The server's token for the runner, never on its argv: a 0600 file pushed with the run's
        files (``--split-token-file``) and deleted from the device and here after the run."""
        if not token:
            yield []
            return
        t = self.session.transport
        local = tmp / f"split-token-{secrets.token_hex(8)}"
        remote = f"{remote_dir}/{local.name}"
        fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        try:
            try:
                t.push(local, remote)
            except TransportError:
                # the session's connection may have been closed while idle (a TCP runner closes idle ones;
                # lowering a head can outlast that): re-open it once, as the session does before its pushes
                if RECONNECT not in t.capabilities:
                    raise
                self.session.reconnect()
                t = self.session.transport
                t.push(local, remote)
            if SHELL in t.capabilities:
                t.shell(f"chmod 600 '{remote}'")
            yield ["--split-token-file", remote]
        finally:
            local.unlink(missing_ok=True)
            try:
                if REMOVE in t.capabilities:
                    t.remove(remote)
                elif SHELL in t.capabilities:
                    t.shell(f"rm -f '{remote}'")
            except Exception:  # noqa: BLE001 - the run's result matters more; the name is random
                pass

    def close(self) -> None:
        """Close the session (only for one this object owns: the verify step leaves the plan's open)."""
        self.session.close()


def verify_end_to_end(og, spec, rows: list[CandidateRow], client, addr, token: str, encoding: str, iterations: int,
                      warmup: int, limit: Optional[int], tail_name: str, say: Progress, *, device: str = "local",
                      split_runner: str = "python", device_token: Optional[str] = None, threads: int = 0,
                      session: Shared = None) -> list[CandidateRow]:
    """Run each candidate end to end: head lowered to .pte (XNNPACK) and run on the device (the native
    runner's split mode, through ``session``: the plan's, or None for one opened here; or the Python
    split client on this host), tail on the server."""
    import torch

    from edgeprobe.lower import lower
    from edgeprobe.models import ModelSpec, flatten_outputs
    from edgeprobe.split.partition import export_head, export_tail, split
    from edgeprobe_runner import codec

    with torch.no_grad():
        want = torch.cat([t.reshape(-1).float() for t in flatten_outputs(spec.module(*spec.example_inputs)
                                                                         if spec.module is not None else
                                                                         spec.exported.module()(*spec.example_inputs))])
    todo = rows if limit is None else rows[:limit]
    # The plan's one program name, reloaded per candidate (the same name replaces the last tail): a name
    # per candidate would hit the server's --max-programs (64) on models with more candidates.
    out: list[CandidateRow] = []
    client_env = {**os.environ, "EDGEPROBE_SPLIT_TOKEN": token or ""}
    with contextlib.ExitStack() as stack:
        native = None
        if split_runner == "native":  # opened before anything runs: an unreachable device fails the step
            native = _NativeSplit(stack.enter_context(session_for(session, device, device_token)).get(), threads)
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeprobe-split-"))
        proc = stack.enter_context(_ClientProcess(Path(tmp), client_env))
        inputs = Path(tmp) / "inputs.bin"
        inputs.write_bytes(codec.encode(list(spec.example_inputs), "fp32"))
        for k, r in enumerate(todo):
            say(f"verify [{k + 1}/{len(todo)}] {r.label}" + (f" (native runner on {device})" if native else ""))
            try:
                s = split(og, spec.example_inputs, set(r.device_node_names))
                if native is not None:
                    rec, head_b, tail_b = _native_candidate(native, s, spec, client, addr, token, encoding, tail_name,
                                                            iterations, warmup, Path(tmp), k)
                    head_outs = [] if s.cloud_only else codec.decode(head_b)
                    got = s.assemble(head_outs, codec.decode(tail_b) if tail_b else [])
                    out.append(_measured_row(r, rec, want, got))
                    continue
                argv = ["--inputs", str(inputs),
                        "--iterations", str(iterations), "--warmup", str(warmup), "--encoding", encoding,
                        "--out", str(Path(tmp) / f"r{k}.json"), "--outputs-file", str(Path(tmp) / f"o{k}.bin")]
                if not s.cloud_only:
                    art = lower(ModelSpec(f"{spec.ref}-head", s.head_example_inputs, exported=export_head(s)))
                    argv += ["--head", str(art.model_path), "--send", str(len(s.crossing))]
                if s.device_only:
                    argv += ["--server", "none"]
                else:
                    client.load(tail_name, export_tail(s))
                    argv += ["--server", f"{addr[0]}:{addr[1]}", "--name", tail_name]
                rec_path = Path(tmp) / f"r{k}.json"
                proc.run(argv, timeout_s=600)
                if not rec_path.exists():  # killed, crashed or refused its arguments: say how
                    raise RuntimeError(f"the split client wrote no result: {proc.stderr_tail()}")
                rec = json.loads(rec_path.read_text())
                if rec["status"] != "ok":
                    raise RuntimeError(rec["error"]["message"])
                outs = codec.decode((Path(tmp) / f"o{k}.bin").read_bytes())
                nh = rec.get("head_outputs_count", 0)
                out.append(_measured_row(r, rec, want, s.assemble(outs[:nh], outs[nh:])))
            except Exception as exc:  # noqa: BLE001 - a failing candidate is a row with its error
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                out.append(dataclasses.replace(r, error=f"{type(exc).__name__}: {msg}"))
    return out + rows[len(todo):]


def _measured_row(r: CandidateRow, rec: dict[str, Any], want, got) -> CandidateRow:
    import torch

    from edgeprobe.compress.fidelity import sqnr_db

    e2e = sorted(it["e2e_ms"] for it in rec["iterations"])
    got_flat = torch.cat([t.reshape(-1).float() for t in got])
    p50 = statistics.median(e2e)
    p90 = e2e[min(len(e2e) - 1, math.ceil(0.9 * len(e2e)) - 1)]
    return dataclasses.replace(r, measured_e2e_p50_ms=p50, measured_e2e_p90_ms=p90,
                               prediction_error=(r.predicted_total_ms - p50) / p50, sqnr_db=sqnr_db(want, got_flat))


def _native_candidate(native: _NativeSplit, s, spec, client, addr, token: str, encoding: str, tail_name: str,
                      iterations: int, warmup: int, tmp: Path, k: int):
    """One candidate on the native runner: its head artifact (cloud-only: the whole model's, whose
    inputs are sent without running it), the tail loaded on the server."""
    from edgeprobe.lower import lower
    from edgeprobe.models import ModelSpec
    from edgeprobe.split.partition import export_head, export_tail

    extra = ["--split-encoding", encoding, "--split-send", str(len(s.crossing))]
    if s.cloud_only:
        art = lower(spec)
        extra += ["--split-send-inputs", "1"]
    else:
        art = lower(ModelSpec(f"{spec.ref}-head", s.head_example_inputs, exported=export_head(s)))
    if s.device_only:
        extra += ["--split-server", "none"]
    else:
        client.load(tail_name, export_tail(s))
        extra += ["--split-server", f"{addr[0]}:{addr[1]}", "--split-name", tail_name]
    return native.run(art, extra, iterations, warmup, tmp, k, token=None if s.device_only else token)
