"""Split tails on the server's GPU: evenly spaced cuts of ResNet18 and MobileNetV2, each tail
exported, loaded into `edgeprobe serve --device cuda` (and `--device cpu` on the same machine, the
baseline of the same run) over loopback, run on the head's real activations, its outputs checked
against the unsplit model, and its ``server_ms`` (the tail's compute, CUDA-synchronized) recorded.
Also the server's per-node ``profile`` on CUDA against its whole-model time.

For a machine with a CUDA GPU (the device tool); on a machine without one, ``--devices cpu`` runs the
same path. Needs only torch, torchvision and this repository (PYTHONPATH=host:device_runner), not
executorch: the GPU machine's image has other torch versions than the pinned set, said in the output.

    PYTHONPATH=host:device_runner python3 benchmarks/split_gpu_tails.py --devices cuda cpu --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

TOKEN = "gpu-tails"


def _serve(device: str, threads: int) -> tuple[subprocess.Popen, int]:
    env = {**os.environ}
    argv = [sys.executable, "-m", "edgeprobe", "serve", "--host", "127.0.0.1", "--port", "0", "--token", TOKEN,
            "--device", device]
    if threads:
        argv += ["--threads", str(threads)]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()
    if not line:
        raise RuntimeError(f"edgeprobe serve --device {device} did not start (exit {p.wait()})")
    return p, int(json.loads(line)["listening"].rsplit(":", 1)[1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    ap.add_argument("--devices", nargs="+", default=["cuda", "cpu"])
    ap.add_argument("--cuts", type=int, default=10, help="evenly spaced cuts per model (plus cloud-only)")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="CPU server threads (0: torch's default)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    import torch
    import torchvision

    from edgeprobe.split.graph import op_graph
    from edgeprobe.split.partition import export_tail, split
    from edgeprobe.split.server import TailClient

    servers = {d: _serve(d, args.threads if d == "cpu" else 0) for d in args.devices}
    clients = {d: TailClient("127.0.0.1", port, TOKEN, timeout_s=300) for d, (_, port) in servers.items()}
    infos = {d: c.server_info() for d, c in clients.items()}
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}; servers: "
          + "; ".join(f"{d}: {i['device']} ({i['threads']} threads)" for d, i in infos.items()), flush=True)
    results: dict = {"torch": torch.__version__, "torchvision": torchvision.__version__, "servers": infos,
                     "models": {}}
    try:
        for name in args.models:
            torch.manual_seed(0)
            model = getattr(torchvision.models, name)(weights=None).eval()
            x = torch.rand(1, 3, 224, 224)
            with torch.no_grad():
                want = model(x)
            og = op_graph(model, (x,))
            order = [n.name for n in og.nodes]
            picks = sorted({0, *(round(k * len(order) / args.cuts) for k in range(1, args.cuts))})
            rows = []
            mres: dict = {"nodes": len(order), "cuts": rows}
            for d, c in clients.items():  # the whole model, per node (the planner's server costs)
                per_node, info = c.profile(f"{name}-whole", og.exported, [x], runs=10)
                mres[f"profile_{d}"] = {"sum_per_node_ms": sum(per_node.values()), "whole_ms": info["whole_ms"]}
            for i in picks:
                t0 = time.monotonic()
                s = split(og, (x,), set(order[:i]))
                tail = export_tail(s)
                inputs = list(s.tail_example_inputs)
                head_out = [t for t in s.head(x)] if i else []
                row = {"cut": "cloud-only" if i == 0 else f"after {order[i - 1]}", "device_nodes": i,
                       "crossing": list(s.crossing),
                       "bytes_in": sum(t.numel() * t.element_size() for t in inputs)}
                for d, c in clients.items():
                    c.load(f"{name}-tail", tail)
                    ms = []
                    for k in range(args.warmup + args.runs):
                        outs, server_ms, _ = c.run(f"{name}-tail", inputs)
                        if k >= args.warmup:
                            ms.append(server_ms)
                    got = s.assemble(head_out, outs)[0] if i else outs[0]
                    row[f"{d}_ms"] = statistics.median(ms)
                    row[f"{d}_max_abs_err"] = float((got - want).abs().max())
                rows.append(row)
                print(f"{name} {row['cut']}: " + ", ".join(
                    f"{d} {row[f'{d}_ms']:.3f} ms (max err {row[f'{d}_max_abs_err']:.1e})" for d in clients)
                    + f"  [{time.monotonic() - t0:.1f} s]", flush=True)
            results["models"][name] = mres
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(results, f, indent=1)
    finally:
        for c in clients.values():
            c.close()
        for p, _ in servers.values():
            p.terminate()
            p.wait(timeout=30)
    if len(clients) > 1 and "cuda" in clients:
        other = next(d for d in clients if d != "cuda")
        print(f"\n| model | cut | bytes in | cuda ms | {other} ms | {other} / cuda |")
        print("|---|---|---|---|---|---|")
        for name, m in results["models"].items():
            for r in m["cuts"]:
                print(f"| {name} | {r['cut']} | {r['bytes_in']:,} | {r['cuda_ms']:.3f} | {r[f'{other}_ms']:.3f} | "
                      f"{r[f'{other}_ms'] / r['cuda_ms']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
