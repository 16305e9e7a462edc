"""Worker log records in the coordinator's log: forwarded, formatted once, and printed above the progress bar.

A local worker process has no handler of its own: what it logs (a calibration file
skipped, an error's traceback, ``-vv`` chunk plans) would print bare on the console
and never reach ``OUT.h5.log``. While a run dispatches to local workers, the
coordinator listens on an authenticated local socket (:class:`LogForwarder`, a
:mod:`multiprocessing.connection` listener: no extra process to outlive a killed
coordinator); each task carries the listener's :class:`LogChannel`, and the worker
sends every record of the ``arielstream`` loggers there (:func:`forward_to`), at the
coordinator's level (``-v``, ``-vv``). The coordinator logs each record it receives
through its own handlers: the console and the log file, once.

Dask workers may run on other machines: there each record travels as a dask event
(:meth:`distributed.Worker.log_event`, on the topic of a :class:`DaskLogChannel`) through the
scheduler to the coordinator, which subscribes to the topic while it dispatches
(:class:`DaskLogs`) and logs each record once, as it does a local worker's; the records stay in
the dask workers' own logs too. A worker's record sent before its task returned is never lost:
it travels to the scheduler in the same ordered stream as the task's result, and what the
subscription has not delivered when the dispatch ends is read back from the scheduler's event log.

Each forwarded record names the observation its task was calibrating: a message that does not
name it already is prefixed with it (``1234/visit 1: ...``).

Why not ``logging.handlers.QueueHandler`` and ``QueueListener``: a ``multiprocessing.Queue``
reaches a process only when it starts, and the loky pool's workers outlive a run (they are
reused by the next one); a ``Manager().Queue()`` can travel in a task but starts a server
process, one more process to outlive a killed coordinator and to count in the memory
budget; and a ``QueueListener`` hands records to a fixed list of handlers, not to the
coordinator's loggers, whose handlers change during a run (:func:`above_bar`).

:func:`above_bar` makes the console handlers write with ``tqdm.write`` while a
progress bar is shown, so that log lines print above the bar instead of through it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

log = logging.getLogger(__name__)

ROOT = "arielstream"  # the logger whose records are forwarded
POLL_SECONDS = 0.1  # how often a receiving thread checks whether the forwarder is closing
_task = threading.local()  # in a worker: the observation the thread's task calibrates (``label``)
_record_ids = itertools.count()
_last_task: tuple[Any, str] = (None, "")  # in a dask worker: the channel and label a task set last (any thread)


@dataclass(frozen=True)
class LogChannel:
    """Where a worker sends its log records, and the level it logs at (picklable: it travels in a task)."""

    address: str
    authkey: bytes
    level: int


@dataclass(frozen=True)
class DaskLogChannel:
    """The dask event topic a dask worker logs its records to, and the level (picklable: travels in a task)."""

    topic: str
    level: int


def _log_received(fields: dict[str, Any]) -> None:
    """In the coordinator: log a worker's record through this process's loggers, naming its observation."""
    record = logging.makeLogRecord(fields)
    label = fields.get("observation") or ""
    if label and label not in record.msg:
        record.msg = f"{label}: {record.msg}"
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


class LogForwarder:
    """In the coordinator: receive the records of local workers and log them through this process's handlers."""

    def __init__(self) -> None:
        authkey = secrets.token_bytes(32)
        self._listener = Listener(family="AF_UNIX", authkey=authkey)
        self.channel = LogChannel(str(self._listener.address), authkey, logging.getLogger(ROOT).getEffectiveLevel())
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, name="arielstream-log-accept", daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn = self._listener.accept()
            except (AuthenticationError, EOFError, ConnectionError):
                continue  # a stranger, or a worker that died while connecting (or close()'s wake-up)
            except OSError as exc:
                if self._closing.is_set():
                    return  # the listener is closed
                # anything else must not end the accepting: a worker would wait for its handshake forever
                log.debug("log forwarder: accept failed (%s); accepting again", exc)
                self._closing.wait(POLL_SECONDS)
                continue
            # drained even when accepted while closing: its worker sent before close() (the loop then ends)
            thread = threading.Thread(target=self._receive, args=(conn,), name="arielstream-log-receive", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _receive(self, conn: Connection) -> None:
        """Log what ``conn`` sends until it closes, or until the forwarder closes and nothing is left to read."""
        with conn:
            while True:
                try:
                    if not conn.poll(POLL_SECONDS):
                        if self._closing.is_set():
                            return
                        continue
                    fields = conn.recv()
                except (EOFError, OSError):
                    return
                _log_received(fields)

    def close(self) -> None:
        """Stop listening, after logging every record the workers have sent so far."""
        self._closing.set()
        # wake the accepting thread with a bare connection (its handshake fails, the loop sees the flag): no
        # handshake of our own that would wait for an answer, so close() cannot hang on a thread that is gone
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as wake:
            wake.settimeout(POLL_SECONDS * 10)
            wake.connect(self.channel.address)
        self._accepter.join(timeout=5)
        self._listener.close()
        for thread in self._threads:  # each drains what is already in its socket, then stops
            thread.join(timeout=5)


class DaskLogs:
    """In the coordinator, while it dispatches to a dask cluster: log what its workers log (a context manager).

    Subscribes to a topic of its own (one per run) on ``client``; on exit, the records the
    subscription has not delivered yet are read from the scheduler's event log, each logged once.
    """

    def __init__(self, client: Any):
        self.client = client
        self.channel = DaskLogChannel(f"arielstream-logs-{secrets.token_hex(8)}",
                                      logging.getLogger(ROOT).getEffectiveLevel())
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def _receive(self, event: tuple[float, Any]) -> None:
        fields = event[1]
        if not isinstance(fields, dict):
            return
        with self._lock:
            if fields.get("id") in self._seen:
                return
            self._seen.add(fields.get("id", ""))
        _log_received(fields)

    def __enter__(self) -> DaskLogs:
        self.client.subscribe_topic(self.channel.topic, self._receive)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            for event in self.client.get_events(self.channel.topic):
                self._receive(event)
            self.client.unsubscribe_topic(self.channel.topic)
        except Exception as err:  # the cluster is gone: what it did not deliver stays in the workers' logs
            log.debug("dask worker logs: %s", err)


class _DaskEventHandler(logging.Handler):
    """In a dask worker (one per process): a record goes to the topic of the run whose task its thread runs.

    A dask worker may run tasks of several runs at once, on several threads: each thread's
    channel (topic and level) and observation are its own (:func:`forward_to`). A thread the
    task started (a read-ahead) has none: its records go with the task that last set one in
    this process. Never raises: dropped outside a worker, or while the worker closes.
    """

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)

    def emit(self, record: logging.LogRecord) -> None:
        channel, label = getattr(_task, "channel", None), getattr(_task, "label", None)
        if channel is None:
            channel, label = _last_task
        if channel is None or record.levelno < channel.level:
            return
        try:
            from distributed import get_worker

            fields = _plain(record)
            fields["observation"] = label or ""
            fields["id"] = f"{os.getpid()}-{threading.get_ident()}-{next(_record_ids)}"
            get_worker().log_event(channel.topic, fields)
        except Exception:  # no worker (a thread outside the task), or the worker is closing
            pass


class _ForwardHandler(logging.Handler):
    """In a worker: send each record to the coordinator's :class:`LogForwarder`; drop it if that is gone."""

    def __init__(self, channel: LogChannel):
        super().__init__(channel.level)
        self.channel = channel
        self._conn: Connection | None = None
        self._broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if self._broken:
            return
        try:
            if self._conn is None:
                self._conn = Client(self.channel.address, family="AF_UNIX", authkey=self.channel.authkey)
            self._conn.send(_plain(record))
        except (OSError, EOFError, AuthenticationError):
            self._broken = True  # the coordinator is gone or stopped listening: its run is over

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
        super().close()


def _plain(record: logging.LogRecord) -> dict[str, Any]:
    """The record as plain values: the message formatted, a traceback as text (like ``SocketHandler``).

    Not ``QueueHandler.prepare``: it folds the traceback into the message, so a worker's
    record would reach the coordinator's handlers as one multi-line message without
    ``exc_text``, unlike the same record logged in the coordinator (``jobs=1``).
    """
    fields = dict(record.__dict__)
    fields["msg"] = record.getMessage()
    fields["args"] = None
    if record.exc_info:
        fields["exc_text"] = record.exc_text or logging.Formatter().formatException(record.exc_info)
    fields["exc_info"] = None
    fields.pop("message", None)
    fields["observation"] = getattr(_task, "label", "")
    return fields


def forward_to(channel: LogChannel | DaskLogChannel, label: str = "") -> None:
    """In a worker: send the ``arielstream`` records to ``channel`` at its level, naming observation ``label``.

    Once per channel and process; ``label`` holds for the calling thread until its next task.
    """
    global _last_task
    _task.label = label
    logger = logging.getLogger(ROOT)
    if isinstance(channel, DaskLogChannel):  # the worker's own handlers stay: its logs keep the records too
        _task.channel = channel
        _last_task = (channel, label)
        if not any(isinstance(h, _DaskEventHandler) for h in logger.handlers):
            logger.addHandler(_DaskEventHandler())
        # lowered, never raised: another run's tasks may log at a lower level (each handler filters its own)
        logger.setLevel(min(logger.getEffectiveLevel(), channel.level))
        return
    current = [h for h in logger.handlers if isinstance(h, _ForwardHandler)]
    if len(current) == 1 and current[0].channel == channel:
        return
    for handler in logger.handlers:
        handler.close()
    logger.handlers[:] = [_ForwardHandler(channel)]
    logger.setLevel(channel.level)
    logger.propagate = False  # never also printed bare by the worker's last-resort handler


class _AboveBar(logging.Handler):
    """A console handler's records, written with ``tqdm.write``: above the progress bar.

    It keeps the console handler's level and filters: without ``-v`` the console leaves out
    the per-observation lines (:data:`.dispatch.CONSOLE_OPTIONAL`) beside a bar as well.
    """

    def __init__(self, console: logging.StreamHandler):
        super().__init__(console.level)
        self.setFormatter(console.formatter)
        self.filters = list(console.filters)
        self.stream = console.stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def above_bar(active: bool) -> Iterator[None]:
    """While ``active`` (a progress bar is shown): the console handlers of ``arielstream`` print above it."""
    logger = logging.getLogger(ROOT)
    original = list(logger.handlers)
    if active:  # exactly StreamHandler: a log file's handler is a subclass and keeps writing its file
        logger.handlers[:] = [_AboveBar(h) if type(h) is logging.StreamHandler else h for h in original]
    try:
        yield
    finally:
        logger.handlers[:] = original
