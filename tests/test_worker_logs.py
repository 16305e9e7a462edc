"""What local worker processes log reaches the run's log file and the coordinator's handlers, once."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import sys
import threading

import pytest
from tqdm import tqdm

from arielstream.config.options import build_config
from arielstream.run.runner import calibrate
from arielstream.run.worker_logs import LogForwarder, _ForwardHandler, above_bar

from .conftest import DATA_SAMPLES

PLANET = 4225610805  # two visits: the second one misses its AIRS dark


@pytest.fixture
def data_without_a_dark(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(DATA_SAMPLES, root, ignore=shutil.ignore_patterns("reference", "simulation_truth"))
    missing = root / "train" / str(PLANET) / "AIRS-CH0_calibration_1" / "dark.parquet"
    missing.unlink()
    return root, missing


@pytest.mark.slow
def test_worker_records_reach_the_log_file_once(data_without_a_dark, tmp_path, caplog):
    root, missing = data_without_a_dark
    caplog.set_level(logging.DEBUG, logger="arielstream")  # the coordinator at -vv: the workers follow
    out = tmp_path / "o.h5"
    summary = calibrate(root, out, planets=[PLANET], jobs=2, progress=False,
                        config=build_config(missing_calibration="skip"))
    assert summary.ok and {r.pid for r in summary.results} - {os.getpid()}  # computed in worker processes
    workers = {r.pid for r in summary.results}

    lines = (tmp_path / "o.h5.log").read_text().splitlines()
    skipped = [line for line in lines if f"{missing}: missing; the step that needs it is skipped" in line]
    assert len(skipped) == 1, lines
    assert f"{PLANET}/visit 1 AIRS-CH0" in skipped[0] and " WARNING arielstream.io.calibration: " in skipped[0]
    pid = int(re.match(r"\S+ \S+ (\d+) ", skipped[0]).group(1))
    assert pid in workers and pid != os.getpid()  # the worker's record, with the worker's pid

    # the coordinator's handlers got it once too, and the workers' debug records (chunk plans) at -vv
    seen = [r for r in caplog.records if r.name == "arielstream.io.calibration" and r.levelno == logging.WARNING]
    assert len(seen) == 1 and seen[0].process in workers
    plans = [r for r in caplog.records if r.name == "arielstream.run.observation" and r.levelno == logging.DEBUG
             and r.process in workers - {os.getpid()}]
    assert plans


@pytest.mark.slow
def test_workers_log_at_the_coordinators_level(data_without_a_dark, tmp_path, caplog):
    root, _ = data_without_a_dark
    caplog.set_level(logging.INFO, logger="arielstream")
    summary = calibrate(root, tmp_path / "o.h5", planets=[PLANET], jobs=2, progress=False,
                        config=build_config(missing_calibration="skip"))
    workers = {r.pid for r in summary.results} - {os.getpid()}
    assert workers
    from_workers = [r for r in caplog.records if r.process in workers]
    assert from_workers and all(r.levelno >= logging.INFO for r in from_workers)


def test_console_lines_print_above_the_progress_bar():
    logger = logging.getLogger("arielstream")
    console = io.StringIO()
    handler = logging.StreamHandler(console)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    before = list(logger.handlers)
    logger.addHandler(handler)
    try:
        bar = tqdm(total=2, file=console)
        with above_bar(True):
            (replaced,) = [h for h in logger.handlers if getattr(h, "stream", None) is console]
            assert replaced is not handler and replaced.level == logging.WARNING
            logger.warning("a worker's warning")
            logger.info("below the console's level")
        bar.close()
        assert handler in logger.handlers
        with above_bar(False):
            assert handler in logger.handlers
    finally:
        logger.handlers[:] = before
    text = console.getvalue()
    assert "WARNING a worker's warning\n" in text and "below the console's level" not in text
    # written on a line of its own (tqdm clears the bar first), not appended to the bar's line
    assert re.search(r"(^|[\r\n])WARNING a worker's warning\n", text)


def test_a_forwarded_record_keeps_its_one_line_message_and_its_traceback_apart(caplog):
    """As logged in the coordinator itself (jobs=1): the message formatted, the traceback in exc_text."""
    caplog.set_level(logging.INFO, logger="arielstream")
    forwarder = LogForwarder()
    handler = _ForwardHandler(forwarder.channel)  # a worker's, here in this process
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        record = logging.LogRecord("arielstream.test_worker_logs", logging.ERROR, __file__, 1,
                                   "%s failed with an unexpected error", ("obs 1",), sys.exc_info())
    try:
        handler.handle(record)
        handler.handle(logging.LogRecord("arielstream.test_worker_logs", logging.DEBUG, __file__, 2,
                                         "below the coordinator's level", None, None))
    finally:
        handler.close()
        forwarder.close()  # logs every record already sent
    (got,) = [r for r in caplog.records if r.name == "arielstream.test_worker_logs"]
    assert got.getMessage() == "obs 1 failed with an unexpected error" and got.exc_info is None
    assert got.exc_text.startswith("Traceback") and got.exc_text.endswith("ZeroDivisionError: division by zero")
    assert got is not record and got.process == os.getpid()


def test_the_forwarder_keeps_accepting_after_a_failed_accept_and_closes_without_waiting(caplog, monkeypatch):
    """An accept that fails (not a closed listener) must neither end the accepting nor make close() hang."""
    import threading
    import time

    caplog.set_level(logging.INFO, logger="arielstream")
    forwarder = LogForwarder()
    real_accept, failures = forwarder._listener.accept, []

    def accept_failing_once():
        if not failures:
            failures.append(1)
            raise OSError(24, "Too many open files")
        return real_accept()

    monkeypatch.setattr(forwarder._listener, "accept", accept_failing_once)

    def send(n: int) -> None:  # a worker: a connection of its own, one record
        handler = _ForwardHandler(forwarder.channel)
        handler.handle(logging.LogRecord("arielstream.test_worker_logs", logging.WARNING, __file__, n,
                                         "worker %d logged", (n,), None))
        handler.close()

    def within(seconds: float, target, *args) -> bool:  # a hang is a failure here, not a stuck test run
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        thread.join(seconds)
        return not thread.is_alive()

    assert within(10, send, 1)  # met the accept the thread was already blocked in; the next one fails
    deadline = time.monotonic() + 10
    while not failures and time.monotonic() < deadline:
        time.sleep(0.05)
    assert failures, "the failing accept was reached"
    assert within(10, send, 2), "a worker's handshake waited: the forwarder stopped accepting"
    assert within(10, forwarder.close), "close() waited for an accepting thread"
    assert "worker 1 logged" in caplog.text and "worker 2 logged" in caplog.text


def _log_in_a_dask_task(channel, label):
    from arielstream.run.worker_logs import forward_to

    forward_to(channel, label)
    logging.getLogger("arielstream.test").warning("a line that does not name its observation")
    logging.getLogger("arielstream.test").info("%s: a line that names it", label)
    logging.getLogger("arielstream.test").debug("below the coordinator's level")
    return os.getpid()


def test_dask_workers_records_reach_the_coordinator_once_naming_their_observation(caplog):
    distributed = pytest.importorskip("distributed")
    from arielstream.run.worker_logs import DaskLogs

    caplog.set_level(logging.INFO, logger="arielstream")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster, distributed.Client(cluster) as client:
        with DaskLogs(client) as logs:
            pid = client.submit(_log_in_a_dask_task, logs.channel, "77/visit 2", pure=False).result()
        assert pid != os.getpid()
        got = [r.getMessage() for r in caplog.records if r.name == "arielstream.test"]
        # every record exactly once (the subscription and the closing read of the event log agree), at the level
        assert sorted(got) == ["77/visit 2: a line that does not name its observation",
                               "77/visit 2: a line that names it"]



_BARRIER = threading.Barrier(2, timeout=60)  # in the worker process: two tasks meet here


def _log_beside_another_run(channel, label, text):
    from arielstream.run.worker_logs import forward_to

    forward_to(channel, label)
    _BARRIER.wait()  # both runs' tasks have set up their channel before either logs
    logging.getLogger("arielstream.test").warning(text)
    return threading.get_ident()


def test_two_runs_sharing_a_dask_worker_each_get_their_own_records(caplog):
    distributed = pytest.importorskip("distributed")
    from arielstream.run.worker_logs import DaskLogs

    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster, distributed.Client(cluster) as client:
        with DaskLogs(client) as a, DaskLogs(client) as b:
            futures = [client.submit(_log_beside_another_run, a.channel, "1/visit 0", "run A's line", pure=False),
                       client.submit(_log_beside_another_run, b.channel, "2/visit 0", "run B's line", pure=False)]
            threads = {f.result() for f in futures}
            assert len(threads) == 2  # at the same time, on two threads of one worker
            got = {name: [e[1]["msg"] for e in client.get_events(logs.channel.topic)] for name, logs in
                   (("a", a), ("b", b))}
    assert got == {"a": ["run A's line"], "b": ["run B's line"]}


@pytest.mark.slow
def test_a_dask_run_logs_its_workers_records_in_the_log_file(data_without_a_dark, tmp_path):
    distributed = pytest.importorskip("distributed")
    root, missing = data_without_a_dark
    out = tmp_path / "o.h5"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster:
        summary = calibrate(root, out, planets=[PLANET], backend="dask", scheduler=cluster.scheduler_address,
                            progress=False, config=build_config(missing_calibration="skip"))
    assert summary.ok and os.getpid() not in {r.pid for r in summary.results}
    lines = (tmp_path / "o.h5.log").read_text().splitlines()
    skipped = [line for line in lines if f"{missing}: missing; the step that needs it is skipped" in line]
    assert len(skipped) == 1, lines
    assert f"{PLANET}/visit 1 AIRS-CH0" in skipped[0] and " WARNING arielstream.io.calibration: " in skipped[0]
