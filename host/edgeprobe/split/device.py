"""The plan's one measurement session on the device: opened once, on first use, shared by its steps."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Union

from edgeprobe.session import MeasureSession, open_session


class DeviceSession:
    """A ``MeasureSession`` on ``device`` (the native runner) opened by the first ``get()`` and closed
    by ``close()``; one given as ``session`` is used as is and left open (its owner closes it). An
    open that fails raises from that ``get()``, and the next ``get()`` tries again."""

    def __init__(self, device: str, token: Optional[str], *, log: Optional[Callable[[str], None]] = None,
                 session: Optional[MeasureSession] = None) -> None:
        self.device = device
        self.token = token
        self.log = log
        self._session = session
        self._owned = session is None

    def get(self) -> MeasureSession:
        if self._session is None:
            self._session = open_session(self.device, runner="native", token=self.token, log=self.log)
        return self._session

    def close(self) -> None:
        if self._owned and self._session is not None:
            session, self._session = self._session, None
            session.close()

    def __enter__(self) -> "DeviceSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Shared = Union[DeviceSession, MeasureSession, None]


@contextlib.contextmanager
def session_for(session: Shared, device: str, token: Optional[str],
                log: Optional[Callable[[str], None]] = None) -> Iterator[DeviceSession]:
    """``session`` (the plan's ``DeviceSession``, or an open ``MeasureSession``) for one step, left open;
    ``None``: a session of the step's own on ``device``, opened on first use and closed after the step."""
    if isinstance(session, DeviceSession):
        yield session
    elif session is not None:
        yield DeviceSession(device, token, session=session)
    else:
        with DeviceSession(device, token, log=log) as own:
            yield own
