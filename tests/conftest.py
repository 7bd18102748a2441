"""Shared fixtures, and the CI gate for tests that need a real peer.

Fixtures: an isolated artifact cache; the real native runner bundle (``bin/`` + ``lib/``, built
once into a temp dir when this machine has none). No fixture changes ``os.environ`` for longer
than its own scope: a test that asks for ``native_runner`` gets ``EDGEPROBE_RUNNER_DIR`` pointing
at that bundle (and no ``EDGEPROBE_NATIVE_RUNNER``) through ``monkeypatch``, so the local device
and an ADB deployment use the same bundle, and later tests see the environment they started with.

Real peers: a test that needs a tool or kernel feature from outside the venv (Debian's ``adb``,
``qemu-aarch64-static``, the aarch64 cross compiler, network namespaces, zeroconf across them,
clang's libFuzzer, a PostgreSQL cluster) is marked ``@pytest.mark.real_peer("kind", ...)`` with the kinds in
``REAL_PEERS``. It skips with a reason where the peer is missing, except under ``CI=true``
(``.ci/run`` sets it): there a skip of a real-peer test is a failure, so a CI run cannot go green
with its real-peer tests silently skipped. The same holds for a module skipped at collection. The
end of the run prints which real peer each marked test ran against, with counts per peer. Under
CI=true with ``EDGEPROBE_CI_BUDGET_S`` set, a run that takes longer than that fails too.
"""

from __future__ import annotations

import logging
import os
import platform
import time
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", category=FutureWarning)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

REAL_PEERS = {
    "adb": "Debian's adb client (apt-get install adb)",
    "qemu": "qemu-aarch64-static (apt-get install qemu-user-static)",
    "cross-compiler": "aarch64-linux-gnu-g++ (apt-get install g++-aarch64-linux-gnu)",
    "netns": "network namespaces and veth pairs (root, iproute2; /dev/net/tun for the link emulator)",
    "zeroconf": "zeroconf multicast across a veth pair",
    "libfuzzer": "clang's libFuzzer (apt-get install clang libclang-rt-14-dev)",
    "postgresql": "a PostgreSQL cluster of its own: initdb and pg_ctl (apt-get install postgresql)",
    "chromium": "Debian's chromium, driven by Playwright (apt-get install chromium)",
    "litert-converter": "the LiteRT converter environment (bash .ci/litert-env.sh; EDGEPROBE_LITERT_PYTHON)",
    "jvm": "OpenJDK 17 and android_app's core jar (make android-core: kotlinc from npm, junit5, libandroid-json-java)",
    "ray": "a Ray cluster of a head and two agent hosts in network namespaces (root, iproute2; pip install ray)",
}
_ALIASES = {"clang": "libfuzzer", "cross": "cross-compiler"}
_STATS = pytest.StashKey[dict]()  # nodeid -> [kinds, outcome]
_START = pytest.StashKey[float]()
_OVER = pytest.StashKey[str]()
JUNIT_RESULTS = pytest.StashKey[object]()  # tests/test_android_core.py's JUnit run (jvmkit.JUnitRun)


def ci_enabled() -> bool:
    """CI=true (or 1/yes), as .ci/run and most CI services set it."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def real_peer_kinds(item: pytest.Item) -> tuple[str, ...]:
    kinds: list[str] = []
    for mark in item.iter_markers("real_peer"):
        for k in mark.args:
            k = _ALIASES.get(str(k).lower(), str(k).lower())
            if k not in kinds:
                kinds.append(k)
    return tuple(kinds)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "real_peer(*kinds): needs a real peer (" + ", ".join(REAL_PEERS) + "); under CI=true a skip of "
        "this test is a failure")
    config.stash[_STATS] = {}
    config.stash[_START] = time.monotonic()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        marks = list(item.iter_markers("real_peer"))
        if not marks:
            continue
        if any(not m.args for m in marks):
            raise pytest.UsageError(f"{item.nodeid}: real_peer needs at least one kind ({', '.join(REAL_PEERS)})")
        unknown = [k for k in real_peer_kinds(item) if k not in REAL_PEERS]
        if unknown:
            raise pytest.UsageError(f"{item.nodeid}: unknown real peer {', '.join(map(repr, unknown))}; "
                                    f"known: {', '.join(REAL_PEERS)} (add a new one to REAL_PEERS in tests/conftest.py)")


def _skip_reason(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    rep = yield
    kinds = real_peer_kinds(item)
    if not kinds:
        return rep
    if rep.skipped and not hasattr(rep, "wasxfail") and ci_enabled():
        rep.outcome = "failed"
        rep.longrepr = (f"CI=true: this test needs the real peer {' + '.join(kinds)} and could not run "
                        f"(a skip here would hide it): {_skip_reason(rep.longrepr)}")
    stats = item.config.stash[_STATS]
    entry = stats.setdefault(item.nodeid, [kinds, "passed"])
    if rep.failed:
        entry[1] = "failed"
    elif rep.skipped and entry[1] != "failed":
        entry[1] = "xfailed" if hasattr(rep, "wasxfail") else "skipped"
    return rep


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    rep = yield
    if rep.skipped and ci_enabled():
        rep.outcome = "failed"
        rep.longrepr = f"CI=true: {collector.nodeid or 'a module'} was skipped at collection: {_skip_reason(rep.longrepr)}"
    return rep


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    budget = os.environ.get("EDGEPROBE_CI_BUDGET_S")
    if not (ci_enabled() and budget) or session.config.option.collectonly:
        return
    took_s = time.monotonic() - session.config.stash[_START]
    if took_s > float(budget):
        session.config.stash[_OVER] = (f"CI=true: the run took {took_s:.0f} s, over its budget of {float(budget):.0f} s "
                                       "(EDGEPROBE_CI_BUDGET_S): make the slowest tests above faster or bound them")
        if session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    stats = config.stash.get(_STATS, {})
    tr = terminalreporter
    if config.option.collectonly:
        return
    if _OVER in config.stash:
        tr.write_sep("=", config.stash[_OVER], red=True)
    if JUNIT_RESULTS in config.stash:  # the JVM tests of android_app's core, in pytest's summary
        j = config.stash[JUNIT_RESULTS]
        tr.write_sep("=", f"android_app core, JUnit 5 on the host JVM: {j.passed} passed, {j.failed} failed, "
                          f"{j.skipped} skipped", red=bool(j.failed), green=not j.failed)
        for failure in j.failures:
            tr.write_line(f"  FAILED {failure}")
    tr.write_sep("=", "real peers" + (" (CI=true: a skip is a failure)" if ci_enabled() else " (CI not set: skips allowed)"))
    if not stats:
        tr.write_line("no test marked real_peer ran")
        return
    for kind in [*REAL_PEERS, *sorted({k for ks, _ in stats.values() for k in ks} - set(REAL_PEERS))]:
        rows = [(nodeid, outcome) for nodeid, (ks, outcome) in stats.items() if kind in ks]
        if not rows:
            continue
        counts = {o: sum(1 for _, out in rows if out == o) for o in ("passed", "failed", "skipped", "xfailed")}
        xfailed = f", {counts['xfailed']} xfailed" if counts["xfailed"] else ""
        tr.write_line(f"{kind}: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
                      f"{xfailed}  [{REAL_PEERS.get(kind, '?')}]")
        for nodeid, outcome in rows:
            tr.write_line(f"  {outcome.upper():8s} {nodeid}")


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("artifact-cache")
    with pytest.MonkeyPatch.context() as mp:  # restored when the session ends
        mp.setenv("EDGEPROBE_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def native_runner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The native runner binary of a whole bundle (``<root>/<machine>/{bin,lib}``): the installed
    one (``edgeprobe.native.install_dir``), else one built into a temp dir for this session.
    Each test that asks for it runs with ``EDGEPROBE_RUNNER_DIR=<root>`` (see ``_native_runner_env``)."""
    from edgeprobe.errors import RunnerNotBuiltError
    from edgeprobe.native import BINARY, build_native_runner, install_dir, verify_bundle

    bundle = install_dir()
    try:
        verify_bundle(bundle)  # installed, complete, and every file matches its bundle.json
    except RunnerNotBuiltError:
        bundle = tmp_path_factory.mktemp("runners") / platform.machine()
        build_native_runner(bundle, log=lambda _m: None)
    return bundle / "bin" / BINARY


@pytest.fixture(autouse=True)
def _native_runner_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """For a test that uses ``native_runner``: the bundle's root in ``EDGEPROBE_RUNNER_DIR`` and no
    ``EDGEPROBE_NATIVE_RUNNER``, for this test only (a test may still set either itself)."""
    if "native_runner" not in request.fixturenames:
        return
    binary: Path = request.getfixturevalue("native_runner")
    monkeypatch.setenv("EDGEPROBE_RUNNER_DIR", str(binary.parent.parent.parent))
    monkeypatch.delenv("EDGEPROBE_NATIVE_RUNNER", raising=False)


@pytest.fixture(scope="session")
def pg_cluster():
    """One real PostgreSQL cluster for the whole session (tests/pg.py): its base URL."""
    from pg import PostgresUnavailable, postgres_cluster

    try:
        with postgres_cluster() as url:
            yield url
    except PostgresUnavailable as e:
        pytest.skip(str(e))


_db_names = iter(range(1 << 30))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.real_peer("postgresql"))])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh farm database URL: a SQLite file, and a new database on the session's PostgreSQL cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'farm.sqlite'}"
    from pg import fresh_database

    return fresh_database(request.getfixturevalue("pg_cluster"), f"t{os.getpid()}_{next(_db_names)}")


@pytest.fixture(scope="session")
def tiny_pte(isolated_cache):
    from edgeprobe.api import export

    return export("tiny_cnn")


@pytest.fixture(scope="session")
def tiny_portable_pte(isolated_cache):
    from edgeprobe.api import export

    return export("tiny_cnn", backend="portable")
