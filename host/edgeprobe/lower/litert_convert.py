"""The LiteRT conversion, run by the converter environment's python (lower/litert.py starts it).

    python litert_convert.py PROGRAM.pt2 INPUTS.pt OUT.tflite RESULT.json

litert-torch cannot live in edgeprobe's environment (it pins typing_extensions 4.12.2 and pulls in
jax and transformers), so this file imports only torch, litert_torch and the standard library,
never edgeprobe. The graph comes as ``torch.export.save`` of the model's ExportedProgram (the one
the cache key hashes); ``litert_torch.convert`` re-exports the program's module, so the .tflite is
that graph. RESULT.json says what happened: the versions used, or the converter's error.
"""

from __future__ import annotations

import json
import sys
import traceback
from importlib import metadata

DISTS = ("litert-torch", "litert-converter", "ai-edge-litert", "torch")


def versions() -> dict:
    """The converter environment's packages that shape the .tflite (they enter the cache key)."""
    out = {}
    for d in DISTS:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = "not installed"
    return out


def convert(program_path: str, inputs_path: str, out_path: str) -> None:
    import litert_torch
    import torch

    program = torch.export.load(program_path)
    inputs = tuple(torch.load(inputs_path, weights_only=True))
    with torch.no_grad():
        litert_torch.convert(program.module(), inputs).export(out_path)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--versions"]:
        print(json.dumps(versions()))
        return 0
    program_path, inputs_path, out_path, result_path = argv
    try:
        convert(program_path, inputs_path, out_path)
        result = {"ok": True, "versions": versions()}
    except Exception as exc:  # noqa: BLE001 - the host turns it into a LoweringError with this message
        traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result = {"ok": False, "error_type": type(exc).__name__, "error": first[:2000]}
    with open(result_path, "w") as f:
        json.dump(result, f)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
