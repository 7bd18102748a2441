"""`edgeprobe` dispatch: parse, call, save, render; an error becomes one line and an exit code."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

from rich.markup import escape

from edgeprobe.cli import render
from edgeprobe.cli.parse import API_COMMANDS, build_parser, call_api
from edgeprobe.cli.render import console, err_console
from edgeprobe.errors import EdgeprobeError, ResultError, UsageError

EXIT_USAGE, EXIT_INTERNAL = 2, 3  # an EdgeprobeError (says what to do) | an unexpected exception (a bug)
_saved: list[str] = []  # files this command has written, named if it fails afterwards


def _quiet_libraries() -> None:
    """torch/executorch print deprecation chatter at import; a CLI user cannot act on it."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    logging.getLogger("torch").setLevel(logging.ERROR)


def _progress(msg: str) -> None:
    err_console.print(f"[dim]· {escape(msg)}[/dim]")


def _save(path, write, *, quiet: bool = False) -> None:
    write(path)
    _saved.append(str(path))
    if not quiet:
        _progress(f"written to {path}")


def _save_plan(path, plan) -> None:
    from edgeprobe.fsutil import atomic_write_text

    _save(path, lambda p: atomic_write_text(p, plan.to_json() + "\n", fault="plan-save"))


def _show(command: str, result: Any, *, json_path=None, out: Optional[str] = None, top: Optional[int] = None,
          wide: bool = False) -> int:
    """Save ``result`` (before anything is rendered: a rendering bug must not lose a measurement),
    print it as ``command`` does, and return that command's exit code."""
    if command == "bench":
        if json_path:
            _save(json_path, result.save)
        console.print(render.render_result(result))
        return 0 if result.ok else 1
    if command == "export":
        console.print(render.render_export(result))
        return 0
    if command == "profile":
        if json_path:
            _save(json_path, result.result.save)
        if not result.result.ok:
            console.print(render.render_result(result.result))
            return 1
        console.print(render.render_profile(result, 15 if top is None else top))
        return 0
    if command == "sweep":
        if out is not None:
            outdir = Path(out)
            outdir.mkdir(parents=True, exist_ok=True)
            _save(outdir / "sweep.json", result.save_json, quiet=True)
        if json_path:
            _save(json_path, result.save_json)
        if out is not None:
            _save(outdir / "sweep.csv", result.save_csv, quiet=True)
            _save(outdir / "sweep.png", result.plot, quiet=True)
        for table in render.render_sweep(result, wide=wide):
            console.print(table)
        if out is not None:
            console.print(f"written: {outdir / 'sweep.json'}, {outdir / 'sweep.csv'}, {outdir / 'sweep.png'}")
        return 0 if any(r.status == "ok" for r in result.rows) else 1
    if command == "split":
        if json_path:
            _save_plan(json_path, result)
        for table in render.render_split(result, 12 if top is None else top, wide=wide):
            console.print(table)
        return 0
    raise AssertionError(f"unhandled command {command}")


def _request_of(path: str):
    """The Request a saved record (bench/profile, sweep or split plan) carries; a bench record is
    checked whole (BenchResult.load), the others for their ``request`` only."""
    from edgeprobe.request import Request
    from edgeprobe.results import BenchResult, from_dict

    p = Path(path)
    try:
        data = json.loads(p.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ResultError(f"no record file at {p}") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ResultError(f"cannot read the record {p}: {str(exc)[:200]}") from None
    if isinstance(data, dict) and "manifest" in data and "run" in data:
        request = BenchResult.load(p).request
    else:
        raw = data.get("request") if isinstance(data, dict) else None
        request = from_dict(Request, raw, "request") if raw is not None else None
    if request is None:
        raise UsageError(f"{p} carries no request (it was written before records stored the command that made "
                         "them): run that command again instead")
    return request


def _rerun(args) -> int:
    request = _request_of(args.record)
    from edgeprobe import api

    _progress(f"re-running: edgeprobe {request.command} {request.args.get('model', '')}")
    result = api.rerun(request, token=args.token, progress=_progress)
    return _show(request.command, result, json_path=args.save, top=args.top, wide=args.wide)


def run(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["runner", "serve"]:
        from edgeprobe_runner.server import main as serve

        if "--native-runner" not in argv and not os.environ.get("EDGEPROBE_NATIVE_RUNNER"):
            from edgeprobe.native import find_native_runner

            try:
                os.environ["EDGEPROBE_NATIVE_RUNNER"] = str(find_native_runner())
            except EdgeprobeError:
                err_console.print("[yellow]native runner not built: serving the python runner only[/yellow]")
        return serve(argv[2:])
    if argv[:1] == ["serve"]:
        from edgeprobe.split.server import main as serve_tails

        return serve_tails(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "show":
        from edgeprobe.results import BenchResult

        console.print(render.render_result(BenchResult.load(args.result)))
        return 0
    _quiet_libraries()
    if args.command in API_COMMANDS:
        result = call_api(args, _progress)
        return _show(args.command, result, json_path=getattr(args, "json", None), out=getattr(args, "out", None)
                     if args.command == "sweep" else None, top=getattr(args, "top", None),
                     wide=getattr(args, "wide", False))
    if args.command == "rerun":
        return _rerun(args)
    if args.command == "devices":
        from edgeprobe.devices import list_devices

        rows = list_devices(args.adb, usb=not args.no_usb, timeout_s=args.timeout_s, token=args.token,
                            log=lambda m: err_console.print(f"[dim]{escape(m)}[/dim]"))
        console.print(render.render_devices(rows))
        return 0
    if args.command == "recipes":
        from edgeprobe.compress import valid_recipes

        console.print(escape(valid_recipes()))
        return 0
    if args.command == "models":
        from edgeprobe.models import known_names

        console.print(" ".join(known_names()))
        return 0
    if args.command == "app":  # the edgeprobe Android app over ADB
        from edgeprobe.cli import app as app_cli

        return app_cli.run(args, console, err_console)
    if args.command == "farm":
        from edgeprobe.cli import farm as farm_cli

        return farm_cli.run(args, console, err_console)
    if args.command == "report":
        from edgeprobe.cli import report as report_cli

        return report_cli.run(args, console, err_console)
    if args.command == "recommend":
        from edgeprobe.cli import recommend as recommend_cli

        return recommend_cli.run(args, console, err_console)
    if args.command in ("compare", "gate"):
        from edgeprobe.cli import gate as gate_cli

        return gate_cli.run(args, console, err_console)
    if args.command == "runner" and args.runner_command == "build":
        from edgeprobe.native import build_native_runner

        path = build_native_runner(Path(args.dest) if args.dest else None, target=args.target, jobs=args.jobs,
                                   log=lambda m: err_console.print(f"[dim]{m}[/dim]"))
        console.print(f"native runner installed: {path}")
        return 0
    raise AssertionError(f"unhandled command {args.command}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``run`` with one line per failure: an EdgeprobeError says what to do (exit 2); anything else
    is a bug, reported in one line with what was already saved (exit 3; the traceback with
    EDGEPROBE_DEBUG=1)."""
    _saved.clear()
    try:
        return run(argv)
    except EdgeprobeError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/red]")
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line, and the data already saved stays saved
        if os.environ.get("EDGEPROBE_DEBUG"):
            import traceback

            traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0]
        kept = f"; already saved: {', '.join(_saved)}" if _saved else ""
        err_console.print(f"[red]internal error:[/red] {escape(type(exc).__name__)}: {escape(first)}{escape(kept)} "
                          "(a bug in edgeprobe; rerun with EDGEPROBE_DEBUG=1 for the traceback)", highlight=False)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
