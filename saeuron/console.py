"""What a person sees: the ``saeuron`` logger, one plain line per message, and a quiet Ray.

Every job entry point calls :func:`setup_console` once (``saeuron.config.parse_config`` does it).
Unless verbose, Ray Data draws no progress bars, Tune prints no trial tables, and Ray's workers'
output and INFO lines go only to the session's log files (``/tmp/ray/session_latest/logs``): the
console shows the study's own lines, a few per stage. A worker's error still reaches the driver as
the exception that fails the stage. Verbose (``tracking.verbose``, ``--verbose true``, or
``SAEURON_VERBOSE=1``) brings Ray Data's, Ray Train's and Tune's full output back. Bottom layer:
imports nothing from ``saeuron``.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger("saeuron")

VERBOSE_ENV = "SAEURON_VERBOSE"
_verbose = False


class _Stdout(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a message comes (a redirected file, pytest's
    capture), flushed per line so it keeps its place among the other output."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


class _Plain(logging.Formatter):
    """The message alone; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


def _env_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def is_verbose() -> bool:
    return _verbose or _env_verbose()


def setup_console(verbose: bool = False) -> None:
    """Send the ``saeuron`` logger's INFO lines (DEBUG when verbose) to stdout; idempotent."""
    global _verbose
    _verbose = bool(verbose) or _env_verbose()
    if not any(isinstance(handler, _Stdout) for handler in logger.handlers):
        handler = _Stdout()
        handler.setFormatter(_Plain("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if _verbose else logging.INFO)
    logger.propagate = False  # a root handler someone else configured would print every line twice
    if not _verbose:  # MLflow's INFO lines and its progress bar per model download (workers started later inherit these)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        if os.environ["MLFLOW_LOGGING_LEVEL"].upper() == "WARNING":
            logging.getLogger("mlflow").setLevel(logging.WARNING)  # when MLflow was imported already


def ray_init_kwargs() -> dict:
    """``ray.init`` arguments for a cluster a job starts or joins: workers' output stays in their
    log files unless verbose (exceptions still come back to the driver)."""
    verbose = is_verbose()
    return {"logging_level": logging.INFO if verbose else logging.WARNING, "log_to_driver": verbose}


def tune_verbosity() -> int:
    """``RunConfig(verbose=...)`` for Tune: its trial tables when verbose, else nothing (trial errors
    still log). Quiet also picks Tune's legacy console (``RAY_AIR_NEW_OUTPUT=0``, unless set): the
    new one prints its experiment table and paths even at verbose=0."""
    if is_verbose():
        return 1
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if "TUNE_WARN_THRESHOLD_S" not in os.environ:
        # Tune warns of every bookkeeping step over 0.5 s (MLflow logging per result on a busy CPU): over 10 s only.
        from ray.tune.utils.util import warn_if_slow

        warn_if_slow.DEFAULT_THRESHOLD = max(warn_if_slow.DEFAULT_THRESHOLD, 10.0)
    return 0


def quiet_ray_data() -> None:
    """In this process, before it creates datasets: no Ray Data progress bars or execution-start
    lines (datasets carry this context to the actors and workers that run them), and the driver's
    ``ray.data`` console handler at WARNING (its log file under the Ray session keeps everything)."""
    if is_verbose():
        return
    import ray.data
    from ray.util.debug import log_once

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    log_once("ray_data_progress_manager_disabled")  # its "progress bars disabled" notice: disabled on purpose
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and type(handler).__name__ != "SessionFileHandler":
            handler.setLevel(logging.WARNING)
