"""edgeprobe's pytest plugin (entry point ``pytest11``): measure a model inside a user's own test suite.

``pytest --edgeprobe-device local`` gives tests the ``edgeprobe_measure`` fixture, a callable that takes
what ``edgeprobe.api.bench`` takes and returns its ``BenchResult``, and the marker
``@pytest.mark.edgeprobe_budget(p50_ms=…, p90_ms=…, p99_ms=…, peak_mib=…)``: a test whose measurements
are over budget fails with the measured numbers and the device; a budgeted metric the run did not
measure fails as "not measured: <reason>", never passes. Without a device (no option, no
``$EDGEPROBE_DEVICE``) the fixture skips its test, so a CI job without a device stays green. With
``--edgeprobe-db URL`` (or ``$EDGEPROBE_FARM_DB``) every measurement is a job of one farm run per
pytest session (``pytest-<UTC time>-<nonce>``), so ``edgeprobe farm results RUN`` lists them.

One device session (``edgeprobe.session.open_session``) per device for the whole pytest session:
the runner is deployed once, not per test. The fixture lowers and measures as ``bench`` does, with
``bench``'s own parameters and defaults, and attaches the request ``bench`` would record.

The budget is checked in a ``pytest_runtest_call`` wrapper, after the test body: an excess is then
the test's own failure (a fixture finalizer would report it as an error in teardown, beside a pass),
and a body that already failed keeps its own failure. The plugin loads in every pytest run where
edgeprobe is installed, so importing it imports nothing heavy (no torch, no ``edgeprobe.api``, no
SQLAlchemy) and it prints nothing unless something was measured.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import os
import uuid
from typing import TYPE_CHECKING, Any, Optional

import pytest

if TYPE_CHECKING:
    from edgeprobe.results import BenchResult
    from edgeprobe.session import MeasureSession

DEVICE_ENV = "EDGEPROBE_DEVICE"
DB_ENV = "EDGEPROBE_FARM_DB"  # edgeprobe.farm.db.engine.ENV_VAR (not imported here: SQLAlchemy)
MARKER = "edgeprobe_budget"
JOB_LEASE_S = 600.0



# ------------------------------------------------------------------------------------------ budgets

Reading = tuple[Optional[float], str]  # the value, or None and why it was not measured
# marker keyword -> (label, unit); peak memory is above the runner's own baseline (the record's delta)
METRICS = {"p50_ms": ("p50", "ms"), "p90_ms": ("p90", "ms"), "p99_ms": ("p99", "ms"), "peak_mib": ("peak", "MiB")}


def read_metric(result: "BenchResult", key: str) -> Reading:
    """The metric ``key`` (of METRICS) of ``result``, or None and why the run did not measure it."""
    from edgeprobe import metrics

    if not result.ok:
        e = result.run.error
        return None, f"the run failed ({e.code}: {e.message})" if e else "the run failed"
    value, why = metrics.peak_memory_mib(result) if key == "peak_mib" else metrics.latency_ms(result, key)
    return value, why or ""


def _num(value: float) -> str:
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3g}"


def budget_of(item: pytest.Item) -> Optional[dict[str, float]]:
    """The item's budget (nearest marker wins per metric); None when unmarked; a bad marker fails the test."""
    marks = list(item.iter_markers(MARKER))
    if not marks:
        return None
    budget: dict[str, float] = {}
    for mark in reversed(marks):  # farthest first, so the nearest overrides
        if mark.args:
            pytest.fail(f"{MARKER} takes keywords only ({', '.join(METRICS)}), got {mark.args!r}", pytrace=False)
        for key, value in mark.kwargs.items():
            if key not in METRICS:
                pytest.fail(f"{MARKER}: unknown budget {key!r}; known: {', '.join(METRICS)}", pytrace=False)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                pytest.fail(f"{MARKER}: {key} must be a positive number, got {value!r}", pytrace=False)
            budget[key] = float(value)
    if not budget:
        pytest.fail(f"{MARKER} without a budget: give at least one of {', '.join(METRICS)}", pytrace=False)
    return budget


def describe(result: "BenchResult") -> str:
    """One line of what was measured: model, artifact, device and every metric (or why not)."""
    m = result.manifest
    parts = []
    for key, (label, unit) in METRICS.items():
        value, _ = read_metric(result, key)
        parts.append(f"{label} {_num(value)} {unit}" if value is not None else f"{label} not measured")
    n = result.stats.n if result.stats else 0
    return f"{m.model_ref} ({m.format}/{m.backend}, {n} iterations) on {result.device.id}: " + ", ".join(parts)


def check_budget(results: list["BenchResult"], budget: dict[str, float]) -> list[str]:
    """Every violation of ``budget`` by ``results``, one line each, followed by what was measured."""
    problems: list[str] = []
    for result in results:
        for key, limit in budget.items():
            label, unit = METRICS[key]
            value, why = read_metric(result, key)
            if value is None:
                problems.append(f"edgeprobe budget {key} on {result.device.id}: not measured: {why}")
            elif value > limit:
                problems.append(f"edgeprobe budget exceeded on {result.device.id}: "
                                f"{label} {_num(value)} {unit} > {_num(limit)} {unit}")
    if problems:
        problems += [f"measured: {describe(r)}" for r in results]
    return problems


# ------------------------------------------------------------------------------------------ measuring


class Measurer:
    """The pytest session's device sessions, one per (device, runner, token), opened on first use."""

    def __init__(self, device: str, iterations: Optional[int], token: Optional[str]) -> None:
        self.defaults: dict[str, Any] = {"device": device, "token": token}
        if iterations is not None:
            self.defaults["iterations"] = iterations
        self.sessions: dict[tuple[str, str, Optional[str]], "MeasureSession"] = {}
        self.opened = 0  # device sessions opened (one per device, unless a connection was lost)

    def _session(self, device: str, runner: str, token: Optional[str]) -> "MeasureSession":
        from edgeprobe.session import open_session

        key = (device, runner, token)
        if key not in self.sessions:
            self.sessions[key] = open_session(device, runner=runner, token=token)
            self.opened += 1
        return self.sessions[key]

    def measure(self, model: Any, **kwargs: Any) -> "BenchResult":
        """``bench(model, **kwargs)`` on the device session kept open for the whole pytest session
        (bench's own parameters, defaults and recorded request)."""
        from pathlib import Path

        from edgeprobe import api
        from edgeprobe.devices import default_runner
        from edgeprobe.errors import TransportError
        from edgeprobe.lower import Artifact, load_artifact

        call = {**self.defaults, **kwargs}
        if isinstance(model, Artifact):
            fmt = model.manifest.format
        elif isinstance(model, (str, Path)) and Path(model).is_dir():
            fmt = load_artifact(Path(model)).manifest.format
        else:
            fmt = call.get("format", "pte")
        call["runner"] = call.get("runner") or default_runner(fmt)
        session = self._session(call["device"], call["runner"], call.get("token"))
        try:
            return api.bench(model, session=session, **call)
        except TransportError:
            # the connection is lost (and could not be re-opened): the next measurement opens a fresh session
            self.sessions.pop((call["device"], call["runner"], call.get("token")), None)
            session.close()
            raise

    def close(self) -> None:
        for s in self.sessions.values():
            s.close()
        self.sessions.clear()


@dataclasses.dataclass
class _Job:
    """A farm job row for one measurement (the fields ``farm.jobs.add_jobs`` reads)."""

    key: str
    model: str
    recipe: str
    backend: str
    format: str
    device_id: str
    launch: int
    settings: dict[str, Any]
    artifact_key: str


class Store:
    """One farm run per pytest session; each measurement becomes a done job with its record."""

    def __init__(self, url: str, farm_file: str) -> None:
        now = _dt.datetime.now(_dt.timezone.utc)
        self.url, self.shown_url, self.farm_file = url, url, farm_file
        self.run_id = f"pytest-{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        self.holder = f"pytest-{os.getpid()}"
        self.db: Any = None
        self.stored = 0

    def add(self, nodeid: str, launch: int, result: "BenchResult") -> None:
        from edgeprobe.farm import jobs

        if self.db is None:
            from edgeprobe.farm.db.engine import open_db

            self.db = open_db(self.url)
            self.shown_url = self.db.url
            jobs.add_run(self.db, self.run_id, self.farm_file)
        m = result.manifest
        settings = {"test": nodeid, **((result.request.args if result.request else {}) or {})}
        settings = {k: v for k, v in settings.items() if k not in ("model", "token")}
        key = hashlib.sha256(f"{self.run_id}\n{self.stored}\n{nodeid}".encode()).hexdigest()
        job = _Job(key, m.model_ref, m.recipe, m.backend, m.format, result.device.id, launch, settings, m.cache_key)
        jobs.add_artifact(self.db, result, (m.model_ref, m.recipe, m.backend, m.format))
        jobs.add_jobs(self.db, self.run_id, [job])
        claimed = jobs.claim(self.db, self.run_id, job.device_id, self.holder, JOB_LEASE_S)
        if claimed is None or claimed.key != key:
            raise RuntimeError(f"edgeprobe: could not claim the job of {nodeid} in run {self.run_id}")
        jobs.finish(self.db, key, self.holder, state="done", **jobs.result_fields(result))
        self.stored += 1

    def close(self, summary: dict[str, Any]) -> None:
        if self.db is None:
            return
        from edgeprobe.farm import jobs

        try:
            jobs.set_run_state(self.db, self.run_id, "done", summary)
        finally:
            self.db.close()


@dataclasses.dataclass
class _State:
    device: Optional[str]
    iterations: Optional[int]
    token: Optional[str]
    store: Optional[Store]
    measurer: Optional[Measurer] = None
    rows: list[list[Any]] = dataclasses.field(default_factory=list)  # [nodeid, result, budget verdict]


_STATE = pytest.StashKey[_State]()
_RESULTS = pytest.StashKey[list]()  # an item's BenchResults, in order


class Measure:
    """The ``edgeprobe_measure`` fixture's value: ``edgeprobe_measure(model, **bench_kwargs) -> BenchResult``."""

    def __init__(self, state: _State, item: pytest.Item) -> None:
        self._state, self._item = state, item
        self.results: list["BenchResult"] = item.stash.setdefault(_RESULTS, [])

    def __call__(self, model: Any, **bench_kwargs: Any) -> "BenchResult":
        state = self._state
        if state.measurer is None:
            state.measurer = Measurer(state.device or "", state.iterations, state.token)
        result = state.measurer.measure(model, **bench_kwargs)
        self.results.append(result)
        state.rows.append([self._item.nodeid, result, "—"])
        if state.store is not None:
            state.store.add(self._item.nodeid, len(self.results) - 1, result)
        return result


# ------------------------------------------------------------------------------------------ hooks


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("edgeprobe", "measuring models on a device (edgeprobe)")
    g.addoption("--edgeprobe-device", metavar="D", default=None,
                help=f"device for the edgeprobe_measure fixture: local, adb:SERIAL, tcp:HOST:PORT, a zeroconf name "
                     f"(default: ${DEVICE_ENV}; none: its tests are skipped)")
    g.addoption("--edgeprobe-iterations", metavar="N", type=int, default=None,
                help="timed iterations per measurement (default: bench's; a test's iterations= wins)")
    g.addoption("--edgeprobe-db", metavar="URL", default=None,
                help=f"store every measurement in this farm database, one run per pytest session (default: ${DB_ENV})")
    g.addoption("--edgeprobe-token-env", metavar="VAR", default=None,
                help="environment variable holding the device's token (a tcp: runner; default: $EDGEPROBE_TOKEN)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(p50_ms=, p90_ms=, p99_ms=, peak_mib=): fail the test when a "
                                       "measurement by edgeprobe_measure in it is over budget or did not measure it")
    iterations = config.getoption("edgeprobe_iterations")
    if iterations is not None and iterations < 1:
        raise pytest.UsageError(f"--edgeprobe-iterations must be >= 1, got {iterations}")
    token_env = config.getoption("edgeprobe_token_env")
    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise pytest.UsageError(f"--edgeprobe-token-env {token_env}: the variable {token_env} is not set")
    device = (config.getoption("edgeprobe_device") or os.environ.get(DEVICE_ENV, "")).strip() or None
    url = (config.getoption("edgeprobe_db") or os.environ.get(DB_ENV, "")).strip() or None
    store = Store(url, f"pytest: {config.rootpath}") if url else None
    config.stash[_STATE] = _State(device, iterations, token, store)


@pytest.fixture(scope="session")
def _edgeprobe_state(pytestconfig: pytest.Config):
    """The plugin's state; the device sessions close when the pytest session's fixtures end."""
    state = pytestconfig.stash[_STATE]
    yield state
    if state.measurer is not None:
        state.measurer.close()


@pytest.fixture
def edgeprobe_measure(request: pytest.FixtureRequest, _edgeprobe_state: _State) -> Measure:
    """``edgeprobe_measure(model_or_artifact, **bench_kwargs) -> BenchResult`` on ``--edgeprobe-device``;
    skips the test when no device is given."""
    if not _edgeprobe_state.device:
        pytest.skip(f"no edgeprobe device: pass --edgeprobe-device D (or set ${DEVICE_ENV}) to measure")
    return Measure(_edgeprobe_state, request.node)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    budget = budget_of(item)  # a malformed marker fails before the body spends time measuring
    outcome = yield
    if budget is not None:
        results = item.stash.get(_RESULTS, [])
        if not results:
            pytest.fail(f"{MARKER} on a test that measured nothing: call edgeprobe_measure(...) in it", pytrace=False)
        problems = check_budget(results, budget)
        for row in item.config.stash[_STATE].rows:
            if row[0] == item.nodeid:
                row[2] = "over" if problems else "ok"
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)
    return outcome


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(_STATE, None)
    if state is not None and state.store is not None:
        over = sum(1 for r in state.rows if r[2] == "over")
        state.store.close({"source": "pytest", "measurements": len(state.rows), "over_budget": over})


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None or not state.rows:
        return
    tr = terminalreporter
    tr.write_sep("-", "edgeprobe measurements")
    head = ["test", "model", "device", "p50 ms", "p90 ms", "peak MiB", "budget"]
    table = [head]
    for nodeid, result, verdict in state.rows:
        cells = [read_metric(result, k)[0] for k in ("p50_ms", "p90_ms", "peak_mib")]
        table.append([nodeid, result.manifest.model_ref, result.device.id,
                      *(_num(v) if v is not None else "—" for v in cells), verdict if result.ok else "error"])
    widths = [max(len(str(r[i])) for r in table) for i in range(len(head))]
    for r in table:
        tr.write_line("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    opened = state.measurer.opened if state.measurer else 0
    tr.write_line(f"{len(state.rows)} measurement(s) in {opened} device session(s)")
    if state.store is not None and state.store.stored:
        tr.write_line(f"stored as farm run {state.store.run_id}: edgeprobe farm results {state.store.run_id} "
                      f"--db {state.store.shown_url}")
