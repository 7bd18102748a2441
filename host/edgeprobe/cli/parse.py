"""Command-line arguments: the argparse parser, and each measuring command's arguments turned into a call of edgeprobe.api."""

from __future__ import annotations

import argparse
import os
from typing import Callable, Optional

# lower.capabilities.FORMATS, spelled out: importing edgeprobe.lower imports torch, and parsing
# arguments must not (tests/test_runtimes.py checks the two agree)
FORMATS = ("ncnn", "onnx", "openvino", "pte", "ptl", "tflite")

DEFAULT_MIN_SECONDS = 2.0  # bench and sweep: a minimum timed duration as well as a count (TFLite's min_secs)
API_COMMANDS = ("bench", "export", "profile", "sweep", "split")  # the commands that are one call of edgeprobe.api


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="torchvision name, zoo name, path/file.py:factory, file.pt2, or an artifact dir")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224")
    p.add_argument("--weights", help="state_dict file (loaded with weights_only=True)")


def _add_device_args(p: argparse.ArgumentParser, iterations: int, warmup: int) -> None:
    """The flags every measuring command shares, with the same names and meanings."""
    p.add_argument("--device", default="local", help="local | tcp:HOST:PORT | adb:HOST:PORT | adb:SERIAL | "
                                                     "a runner name from `edgeprobe devices`")
    p.add_argument("--token", help="token of a tcp runner (default: $EDGEPROBE_TOKEN)")
    p.add_argument("--iterations", type=int, default=iterations, help=f"timed iterations, at least (default {iterations})")
    p.add_argument("--warmup", type=int, default=warmup, help=f"untimed iterations first (default {warmup})")
    p.add_argument("--threads", type=int, default=0, help="0 = the runtime's default")
    p.add_argument("--timeout-s", type=float, default=300.0, help="kill a run that takes longer (default 300)")


def _add_min_seconds(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-seconds", type=float, default=DEFAULT_MIN_SECONDS,
                   help="time iterations until at least this long has been timed, as well as --iterations "
                        f"(default {DEFAULT_MIN_SECONDS:g}: 20 iterations of a fast model are too few for a stable "
                        "figure; 0 = exactly --iterations)")
    p.add_argument("--max-iterations", type=int, default=0,
                   help="stop the timed loop here even before --min-seconds (0 = no cap): keeps the record of a "
                        "very fast model small")


def _add_measure_args(p: argparse.ArgumentParser, iterations: int, warmup: int) -> None:
    _add_device_args(p, iterations, warmup)
    p.add_argument("--backend", help="xnnpack (default for pte) | portable | cpu (ptl) | vulkan (pte, on an "
                                     "edgeprobe app whose info lists the vulkan delegate)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeprobe", description="Lower PyTorch models and measure them on devices.")
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="lower a model and measure it on a device")
    _add_model_args(b)
    _add_measure_args(b, iterations=20, warmup=3)
    b.add_argument("--format", default="pte", choices=list(FORMATS))
    b.add_argument("--runner", choices=["native", "python", "app"],
                   help="default: native for pte, python for ptl; app: the edgeprobe Android app's in-process "
                        "ExecuTorch runner (a tcp device started by `edgeprobe app start`)")
    _add_min_seconds(b)
    b.add_argument("--no-cache", action="store_true", help="lower again even if a cached artifact exists")
    b.add_argument("--json", metavar="PATH", help="also write the result record to this file")
    h = b.add_argument_group("run hygiene (checked before the run, recorded in the result)")
    h.add_argument("--min-battery", type=float, metavar="PERCENT", help="fail if the battery is below this level")
    h.add_argument("--max-thermal-status", type=int, metavar="N",
                   help="wait (up to --thermal-wait-s), then fail, while Android's thermal status is above N "
                        "(0 none, 1 light, 2 moderate, 3 severe)")
    h.add_argument("--thermal-wait-s", type=float, default=120.0)
    h.add_argument("--cooldown-s", type=float, default=0.0, help="idle this long before the run")
    h.add_argument("--affinity", default="all", help="all | big (fastest cluster) | a core list, e.g. 4-7")
    h.add_argument("--fixed-performance", action="store_true",
                   help="Android: `cmd power set-fixed-performance-mode-enabled` during the run")
    h.add_argument("--idle-s", type=float, default=1.0,
                   help="idle window before the timed loop whose power is subtracted from the run's (energy)")
    h.add_argument("--retries", type=int, default=1,
                   help="ADB: reconnect and run again this many times after the connection is lost mid-run")

    e = sub.add_parser("export", help="lower a model to an artifact directory")
    _add_model_args(e)
    e.add_argument("--format", default="pte", choices=list(FORMATS))
    e.add_argument("--backend")
    e.add_argument("--out", help="artifact directory (default: the cache)")

    pr = sub.add_parser("profile", help="per-operator times from an ETDump run (ExecuTorch Inspector)")
    _add_model_args(pr)
    _add_measure_args(pr, iterations=5, warmup=1)
    pr.add_argument("--top", type=int, default=15)
    pr.add_argument("--etdump", help="keep the ETDump at this path")
    pr.add_argument("--json", metavar="PATH", help="also write the ETDump run's result record to this file")

    sw = sub.add_parser("sweep", help="compress with each recipe, measure every variant on a device, mark the "
                                      "Pareto front")
    _add_model_args(sw)
    sw.add_argument("--recipes", default="fp32,int8,int8-dynamic,magnitude:0.5,channel:0.3+int8,lowrank:0.5,cluster:16",
                    help="comma-separated recipes, steps joined by + (e.g. fp32,int8,channel:0.3+int8); "
                         "`edgeprobe recipes` lists them")
    _add_device_args(sw, iterations=20, warmup=3)
    _add_min_seconds(sw)
    sw.add_argument("--dataset", default="auto", choices=["auto", "digits", "user", "random"],
                    help="auto: digits for digits_cnn (trained first), else --eval or random inputs")
    sw.add_argument("--calibration", metavar="NPZ", help="calibration inputs (.npz: array x, or the first array)")
    sw.add_argument("--train", metavar="NPZ", help="labelled training data (.npz: x, y) for taylor/distill/qat/finetune")
    sw.add_argument("--eval", metavar="NPZ", help="evaluation data (.npz: x [, y]); labels give accuracy")
    sw.add_argument("--train-epochs", type=int, help="digits: epochs to train the model first (default 15; 0 with --weights)")
    sw.add_argument("--out", default="sweep", help="directory for sweep.json, sweep.csv and sweep.png")
    sw.add_argument("--json", metavar="PATH", help="also write the sweep (sweep.json's content) to this file")
    sw.add_argument("--wide", action="store_true", help="print every column (default: those that fit the terminal)")
    sub.add_parser("recipes", help="list the compression recipes and their parameters")

    sp = sub.add_parser("split", help="plan (and --verify end to end) where to cut a model between the device and "
                                      "a server")
    _add_model_args(sp)
    sp.add_argument("--device", default="local")
    sp.add_argument("--server", help="tcp:HOST:PORT of `edgeprobe serve` (without it: server costs timed on this "
                                     "host, no verification)")
    sp.add_argument("--device-server", metavar="tcp:HOST:PORT",
                    help="the same server as the device reaches it, if not at --server (the host's way in, which "
                         "loads the tail programs)")
    sp.add_argument("--token", help="edgeprobe serve's token (default: $EDGEPROBE_SERVE_TOKEN; never $EDGEPROBE_TOKEN)")
    sp.add_argument("--device-token", help="a tcp: device runner's token (default: $EDGEPROBE_TOKEN)")
    sp.add_argument("--uplink", default="5.85mbit")
    sp.add_argument("--downlink", default="20mbit")
    sp.add_argument("--rtt", default="40ms")
    sp.add_argument("--encoding", default="fp32", choices=["fp32", "fp16", "int8"])
    sp.add_argument("--objective", default="latency", choices=["latency", "energy"])
    sp.add_argument("--memory-limit-mb", type=float, help="device peak-memory limit (additive per-operator model)")
    sp.add_argument("--iterations", type=int, default=10)
    sp.add_argument("--warmup", type=int, default=2)
    sp.add_argument("--verify", action="store_true", help="run every candidate end to end and report the regret")
    sp.add_argument("--verify-candidates", type=int, help="verify only the N best-predicted candidates")
    sp.add_argument("--split-runner", default="auto", choices=["auto", "native", "python"],
                    help="the device half in --verify: native (the C++ runner's split mode; any device) or python "
                         "(local only); auto: python on local, native elsewhere")
    sp.add_argument("--confirm", type=int, default=3, metavar="N",
                    help="time the compiled heads of the N best-predicted splits on the device and choose with "
                         "them (0: predictions only)")
    sp.add_argument("--network", default="declared", choices=["declared", "measured"],
                    help="plan with the declared link (--uplink/--downlink/--rtt) or with the one measured to "
                         "--server (a short probe runs either way; the plan warns when they differ)")
    sp.add_argument("--packet-overhead", type=int, default=52, metavar="BYTES",
                    help="TCP/IP header bytes per 1448-byte segment carried by the link rates (default 52: "
                         "TCP/IPv4 with timestamps; 0 if the rates are goodput, e.g. from a speed test)")
    sp.add_argument("--top", type=int, default=12, help="candidate rows to print")
    sp.add_argument("--json", metavar="PATH", help="also write the plan to this file")
    sp.add_argument("--wide", action="store_true", help="print every column (default: those that fit the terminal)")

    d = sub.add_parser("devices", help="list the devices edgeprobe can reach, with their health")
    d.add_argument("--adb", action="append", default=[], metavar="HOST:PORT",
                   help="an ADB-over-TCP address to check (repeatable; also $EDGEPROBE_ADB_ADDRESSES)")
    d.add_argument("--no-usb", action="store_true", help="skip the USB scan for ADB devices")
    d.add_argument("--token", help="check zeroconf runners' authorization with this token (default: $EDGEPROBE_TOKEN; "
                                   "only an HMAC proof is sent, never the token)")
    d.add_argument("--timeout-s", type=float, default=3.0, help="per-device connect timeout")
    s = sub.add_parser("show", help="print a saved result record")
    s.add_argument("result", help="result.json written by `bench --json`")
    sub.add_parser("models", help="list the model names edgeprobe knows")
    rr = sub.add_parser("rerun", help="run the request a saved record came from again (bench, profile, sweep, split)")
    rr.add_argument("record", help="a record written by bench/profile --json, sweep (sweep.json or --json) or split --json")
    rr.add_argument("--token", help="the runner's (split: the server's) token; never stored in a record "
                                    "(default: the environment, as the original command)")
    rr.add_argument("--save", metavar="PATH", help="write the new record to this file")
    rr.add_argument("--top", type=int, help="profile/split: rows to print (default: the original command's)")
    rr.add_argument("--wide", action="store_true", help="sweep/split: print every column")

    from edgeprobe.cli import app as app_cli
    from edgeprobe.cli import farm as farm_cli
    from edgeprobe.cli import report as report_cli
    from edgeprobe.cli import gate as gate_cli
    from edgeprobe.cli import recommend as recommend_cli

    app_cli.add_parser(sub)  # edgeprobe app install|start|stop (the Android app over ADB)
    farm_cli.add_parser(sub)
    recommend_cli.add_parser(sub)
    report_cli.add_parser(sub)
    gate_cli.add_parser(sub)
    r = sub.add_parser("runner", help="manage the device runners")
    rsub = r.add_subparsers(dest="runner_command", required=True)
    rb = rsub.add_parser("build", help="build and install the native runner for this host")
    rb.add_argument("--dest", help="install prefix (default: the user data dir)")
    rb.add_argument("--target", choices=["x86_64", "aarch64"],
                    help="cross-build for this CPU (default: this machine); aarch64 needs g++-aarch64-linux-gnu")
    rb.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    rsub.add_parser("serve", help="serve this machine's runners over TCP (+ zeroconf); options: --help",
                    add_help=False)
    sub.add_parser("serve", help="serve split tails (the cloud half) over TCP, on CUDA when available; "
                                 "options: --help", add_help=False)
    return parser


def _shape(text: Optional[str]):
    if not text:
        return None
    from edgeprobe.models import parse_input_shape

    return parse_input_shape(text)



def call_api(args: argparse.Namespace, progress: Callable[[str], None]):
    """The edgeprobe.api call ``args`` asks for (one of API_COMMANDS); torch is imported here, not before."""
    from edgeprobe import api

    if args.command == "bench":
        return api.bench(
            args.model, device=args.device, format=args.format, backend=args.backend, runner=args.runner,
            token=args.token, iterations=args.iterations, warmup=args.warmup, min_seconds=args.min_seconds,
            max_iterations=args.max_iterations, threads=args.threads,
            timeout_s=args.timeout_s, input_shape=_shape(args.input_shape), weights=args.weights,
            use_cache=not args.no_cache, progress=progress, min_battery_percent=args.min_battery,
            max_thermal_status=args.max_thermal_status, thermal_wait_s=args.thermal_wait_s,
            cooldown_s=args.cooldown_s, affinity=args.affinity, fixed_performance=args.fixed_performance,
            idle_s=args.idle_s, retries=args.retries,
        )
    if args.command == "export":
        return api.export(args.model, format=args.format, backend=args.backend, input_shape=_shape(args.input_shape),
                          weights=args.weights, out_dir=args.out, progress=progress)
    if args.command == "profile":
        return api.profile(args.model, device=args.device, backend=args.backend, iterations=args.iterations,
                           warmup=args.warmup, threads=args.threads, timeout_s=args.timeout_s,
                           input_shape=_shape(args.input_shape), weights=args.weights, etdump_path=args.etdump,
                           progress=progress, token=args.token)
    if args.command == "sweep":
        return api.sweep(args.model, args.recipes, device=args.device, dataset=args.dataset,
                         calibration=args.calibration, train=args.train, eval_data=args.eval, weights=args.weights,
                         train_epochs=args.train_epochs, input_shape=_shape(args.input_shape),
                         iterations=args.iterations, warmup=args.warmup, min_seconds=args.min_seconds,
                         max_iterations=args.max_iterations, threads=args.threads, token=args.token,
                         timeout_s=args.timeout_s, progress=progress)
    if args.command == "split":
        return api.split(args.model, device=args.device, server=args.server, device_server=args.device_server,
                         token=args.token, device_token=args.device_token, uplink=args.uplink,
                         downlink=args.downlink, rtt=args.rtt, encoding=args.encoding, objective=args.objective,
                         memory_limit_bytes=int(args.memory_limit_mb * 2**20) if args.memory_limit_mb else None,
                         input_shape=_shape(args.input_shape), weights=args.weights, iterations=args.iterations,
                         warmup=args.warmup, verify=args.verify, verify_candidates=args.verify_candidates,
                         confirm=args.confirm, packet_overhead_bytes=args.packet_overhead,
                         split_runner=args.split_runner, network=args.network, progress=progress)
    raise AssertionError(f"{args.command} is not an edgeprobe.api command")
