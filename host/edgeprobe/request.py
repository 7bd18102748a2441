"""The request a record came from: the command and every argument, defaults resolved, stored in
every record (bench, profile, sweep, split plan) so that a farm or a user can run exactly the same
thing again (``edgeprobe.api.rerun``).

Arguments that have no faithful JSON form (an ``nn.Module`` object, tensors, callables) are stored
as a description and named in ``not_reproducible``, so a re-run refuses instead of guessing. A
token is never stored: only whether one was given (it comes back from the environment).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from edgeprobe.errors import ResultError, UsageError

REQUEST_SCHEMA_VERSION = 1
# arguments that are about how the work is shown or where secrets live, not what is measured
NOT_STORED = frozenset({"progress", "log", "session"})
SECRETS = frozenset({"token", "device_token"})

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Request:
    command: str  # bench | profile | sweep | split
    args: dict[str, Any]  # every argument, defaults resolved, as JSON values
    not_reproducible: tuple[str, ...] = ()  # "<arg>: why" for arguments stored only as a description
    schema_version: int = REQUEST_SCHEMA_VERSION

    @property
    def reproducible(self) -> bool:
        return not self.not_reproducible

    def check_version(self) -> None:
        if self.schema_version > REQUEST_SCHEMA_VERSION:
            raise ResultError(f"the record's request has schema_version {self.schema_version}; this edgeprobe reads "
                              f"up to {REQUEST_SCHEMA_VERSION}: upgrade edgeprobe to re-run it")


def _json_value(name: str, value: Any, why: list[str]) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(name, v, why) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _json_value(name, v, why) for k, v in value.items()}
    manifest = getattr(getattr(value, "manifest", None), "cache_key", None)
    if manifest is not None and hasattr(value, "dir"):  # an Artifact: its directory is the reference
        return str(value.dir)
    shape = getattr(value, "shape", None)
    desc = (f"<{type(value).__name__} shape {list(shape)}>" if shape is not None
            else f"<{type(value).__module__}.{type(value).__qualname__}>")
    why.append(f"{name}: a {type(value).__name__} object has no stored form; pass a name, a path or a file")
    return desc


def capture(command: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Request:
    """The Request for ``fn(*args, **kwargs)``: every parameter of ``fn``, defaults resolved."""
    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    why: list[str] = []
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if name in NOT_STORED:
            continue
        if name in SECRETS:
            out[name] = None if value is None else "<given; not stored>"
            continue
        out[name] = _json_value(name, value, why)
    return Request(command, out, tuple(why))


def records_request(command: str, signature_of: Optional[Callable[[], Callable[..., Any]]] = None
                    ) -> Callable[[F], F]:
    """Decorate an API function so its result carries the Request that produced it (a result with a
    ``request`` field, or a report whose ``result`` has one). ``signature_of`` names the function
    whose parameters (and defaults) a thin ``**kwargs`` wrapper passes on to, loaded lazily."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            request = capture(command, signature_of() if signature_of else fn, args, kwargs)
            return attach(fn(*args, **kwargs), request)

        inner.__wrapped_request__ = command  # type: ignore[attr-defined]
        return inner  # type: ignore[return-value]

    return wrap


def attach(result: Any, request: Request) -> Any:
    if dataclasses.is_dataclass(result) and any(f.name == "request" for f in dataclasses.fields(result)):
        return dataclasses.replace(result, request=request)
    inner = getattr(result, "result", None)
    if dataclasses.is_dataclass(result) and inner is not None and dataclasses.is_dataclass(inner):
        return dataclasses.replace(result, result=attach(inner, request))
    return result


def rerun_arguments(request: Request, *, token: Optional[str] = None) -> dict[str, Any]:
    """Keyword arguments to call the request's command again; refuses a request that cannot be."""
    request.check_version()
    if not request.reproducible:
        raise UsageError("this record cannot be re-run exactly: " + "; ".join(request.not_reproducible))
    args = dict(request.args)
    for name in SECRETS & args.keys():
        args[name] = token if name == "token" else None
    return args
