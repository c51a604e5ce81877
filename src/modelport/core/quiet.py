"""Third-party noise goes to a log file, not the terminal.

ONNX Runtime's quantizer logs through the *root* logger (``logging.warning`` installs a stderr handler on first
use, so its protobuf dumps print as ``WARNING:root:`` blocks), numpy warns ``RuntimeWarning: invalid value
encountered in divide`` inside calibration, torch's extension loader says "No CUDA runtime is found" when NNCF
imports it on a CPU machine, and NNCF draws its own rich progress bars on rich's global console (stdout). None
of that is modelport's output, and on a CPU-only machine none of it is news, but it is kept: ``captured(path)``
sends it to ``path`` while modelport runs, and ``--debug`` leaves it on the terminal.

Only the root logger's handlers, Python's warning display and rich's global console are swapped, and all three
are restored on exit; loggers with their own handlers (a user's) are left alone.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

# Third-party loggers that may carry their own stderr handlers or levels: raised to WARNING into the log only.
THIRD_PARTY_LOGGERS = ("onnxruntime", "nncf", "openvino", "torch", "onnxscript", "onnx", "torch_pruning")


def default_log_path() -> Path:
    """Where the CLI writes captured noise: ``$MODELPORT_LOG`` or one file per user in the temp folder."""
    env = os.environ.get("MODELPORT_LOG")
    if env:
        return Path(env)
    user = os.environ.get("USER") or str(os.getuid())
    return Path(tempfile.gettempdir()) / f"modelport-{user}" / "modelport.log"


@dataclass
class Captured:
    """What ``captured`` collected: the log file and how many third-party records and warnings went there."""

    path: Path
    records: int = 0

    def summary(self) -> str:
        """One line for the end of a command, or "" when nothing was captured."""
        if not self.records:
            return ""
        what = "message" if self.records == 1 else "messages"
        return f"{self.records} third-party {what} (ONNX Runtime, NNCF, numpy…) written to {self.path}; --debug shows them"


class _HeaderedStream:
    """A text stream that writes a header line (run start, pid) before its first write: runs that captured nothing
    leave nothing in the log."""

    def __init__(self, raw: TextIO, header: str) -> None:
        self._raw, self._header = raw, header
        self.name = raw.name

    def write(self, text: str) -> int:
        if self._header:
            self._raw.write(self._header)
            self._header = ""
        return self._raw.write(text)

    def flush(self) -> None:
        self._raw.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        self._raw.close()


class _CountingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes third-party records to the log file and counts them; modelport's own records are not its business."""

    def __init__(self, stream: Any, captured: Captured) -> None:
        super().__init__(stream)
        self._captured = captured
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.addFilter(lambda r: not _ours(r))

    def emit(self, record: logging.LogRecord) -> None:
        if record.__dict__.get("_modelport_logged"):  # reached us twice (its logger's handler and root's)
            return
        record.__dict__["_modelport_logged"] = True
        self._captured.records += 1
        super().emit(record)


def _ours(record: logging.LogRecord) -> bool:
    return record.name == "modelport" or record.name.startswith("modelport.")


def _own_handler() -> logging.Handler:
    """modelport's own warnings (e.g. the trust store) still reach the user, on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    handler.addFilter(_ours)
    return handler


@contextlib.contextmanager
def captured(path: str | Path | None = None) -> Iterator[Captured]:
    """Send third-party logging, Python warnings and rich's global console to ``path`` (appended) until exit.

    The file is appended to and never raises into the caller: if it cannot be opened the noise goes to
    ``os.devnull`` and ``Captured.path`` says so. Records of ``modelport.*`` loggers still print on stderr.
    """
    target = Path(path) if path is not None else default_log_path()
    raw = _open_log(target)
    result = Captured(path=target if raw.name != os.devnull else Path(os.devnull))
    stream = _HeaderedStream(raw, f"--- modelport {_dt.datetime.now().isoformat(timespec='seconds')} pid {os.getpid()}\n")
    handlers = [_CountingHandler(stream, result), _own_handler()]
    root = logging.getLogger()
    saved_root = list(root.handlers), root.level
    saved_third = {n: _detach(logging.getLogger(n)) for n in THIRD_PARTY_LOGGERS}
    for h in saved_root[0]:
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)  # a root with a handler: logging.warning() no longer installs a stderr one
    root.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(), _rich_global_console(stream), _terminal_handlers_to(handlers[0]):
            warnings.showwarning = _warning_router(warnings.showwarning)
            yield result
    finally:
        for h in handlers:
            root.removeHandler(h)
        for h in saved_root[0]:
            root.addHandler(h)
        root.setLevel(saved_root[1])
        for name, saved in saved_third.items():
            _attach(logging.getLogger(name), saved)
        handlers[0].flush()
        stream.close()


@contextlib.contextmanager
def _terminal_handlers_to(log: logging.Handler) -> Iterator[None]:
    """Any other logging handler that writes to the terminal (torch installs its own on ``import torch``, after the
    capture began; NNCF has one on stdout) hands third-party records to ``log`` instead, until exit."""
    original = logging.Handler.handle

    def handle(self: logging.Handler, record: logging.LogRecord) -> Any:
        if self is not log and not _ours(record) and _writes_to_terminal(self):
            return log.handle(record)
        return original(self, record)

    logging.Handler.handle = handle  # type: ignore[method-assign]
    try:
        yield
    finally:
        logging.Handler.handle = original  # type: ignore[method-assign]


def _writes_to_terminal(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return stream is not None and any(stream is s for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__))


def _detach(logger: logging.Logger) -> tuple[list[logging.Handler], int, bool]:
    """Take a third-party logger's own handlers (NNCF prints to stdout through one) so its records reach root."""
    saved = (list(logger.handlers), logger.level, logger.propagate)
    for h in saved[0]:
        logger.removeHandler(h)
    logger.setLevel(logging.WARNING)
    logger.propagate = True
    return saved


def _attach(logger: logging.Logger, saved: tuple[list[logging.Handler], int, bool]) -> None:
    for h in saved[0]:
        logger.addHandler(h)
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


_PACKAGE_DIR = str(Path(__file__).resolve().parent.parent)


def _warning_router(show: Any) -> Any:
    """``warnings.showwarning`` replacement: modelport's own warnings are shown as before (they are meant for
    the user); any other becomes a record of the ``py.warnings`` logger, i.e. a line in the log file."""

    def route(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
              line: str | None = None) -> None:
        if category.__module__.startswith("modelport") or str(filename).startswith(_PACKAGE_DIR):
            show(message, category, filename, lineno, file, line)
            return
        text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
        logging.getLogger("py.warnings").warning(text)

    return route


@contextlib.contextmanager
def _rich_global_console(stream: Any) -> Iterator[None]:
    """Point rich's global console (NNCF's progress bars draw there) at ``stream``; restore it afterwards."""
    try:
        import rich
    except ImportError:  # rich is a dependency, but the capture must never be the thing that fails
        yield
        return
    console = rich.get_console()
    saved = dict(console.__dict__)
    rich.reconfigure(file=stream, force_terminal=False, force_interactive=False, width=120)
    try:
        yield
    finally:
        console.__dict__.clear()
        console.__dict__.update(saved)


MAX_LOG_BYTES = 4 * 1024 * 1024  # started afresh beyond this, so the file cannot grow without bound


def _open_log(path: Path) -> TextIO:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = "w" if path.is_file() and path.stat().st_size > MAX_LOG_BYTES else "a"
        return open(path, mode, encoding="utf-8", errors="replace", buffering=1)  # closed by captured()
    except OSError:
        return open(os.devnull, "w", encoding="utf-8")


__all__ = ["THIRD_PARTY_LOGGERS", "Captured", "captured", "default_log_path"]
