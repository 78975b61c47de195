"""Work on a background thread that Cancel stops: the preview and the render share it."""

from __future__ import annotations

import logging
import threading
from typing import Any

from PySide6.QtCore import QThread, Signal

from vs_uav.errors import UavError

logger = logging.getLogger("vs_uav_gui")


class BackgroundJob(QThread):
    """:meth:`work` on a background thread. ``cancel()`` sets :attr:`stop`, which the work
    watches; it ends with one of the signals (delivered on the UI's thread) and ``outcome``:
    "done", "failed" (one line: the reason, or the exception type first for a bug, whose
    traceback goes to the log) or "cancelled" (an exception of :attr:`stop_types`)."""

    progressed = Signal(int, int)  # done, total
    succeeded = Signal(object)  # what work() returned
    failed = Signal(str)
    stopped = Signal(str)  # what the stop said ("" when nothing)

    stop_types: tuple[type[BaseException], ...] = ()
    what = "background job"  # for the log

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.stop = threading.Event()
        self.outcome = "running"  # then "done", "failed" or "cancelled"

    def cancel(self) -> None:
        self.stop.set()

    @property
    def cancelling(self) -> bool:
        return self.stop.is_set()

    def work(self) -> Any:
        raise NotImplementedError

    def run(self) -> None:
        try:
            result = self.work()
        except self.stop_types as e:
            self.outcome = "cancelled"
            self.stopped.emit(str(e))
        except Exception as e:  # any failure is a line in the window, never a crash
            expected = isinstance(e, (UavError, ValueError, OSError))
            if not expected:  # a bug: its traceback goes to the log
                logger.warning("%s failed", self.what, exc_info=True)
            message = " ".join(str(e).split())
            self.outcome = "failed"
            self.failed.emit(message if expected and message else f"{type(e).__name__}: {message}")
        else:
            self.outcome = "done"
            self.succeeded.emit(result)
