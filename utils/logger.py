"""The console and `log.txt` show the same timestamped lines; other ranks speak only of problems.

Lines logged before the run folder exists (loading the data, building the model) are kept and
written to `log.txt` once it is opened, so the file holds the whole story of the run.
"""
import logging
import sys

from tqdm import tqdm

FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _TqdmHandler(logging.StreamHandler):
    """Writes through tqdm so a log line does not break a progress bar."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


class _EarlyRecords(logging.Handler):
    """Keeps the records logged before a log file is attached."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def setup_logger(name="torch_template", log_file=None, main_process=True):
    """Console logging; with `log_file`, also that file, starting with the lines logged so far."""
    logger = logging.getLogger(name)
    early = next((handler.records for handler in logger.handlers if isinstance(handler, _EarlyRecords)), [])
    close_logger(logger)
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    logger.propagate = False
    console = _TqdmHandler(sys.stderr)
    console.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
    logger.addHandler(console)
    if log_file is None:
        logger.addHandler(_EarlyRecords())
    else:
        file_handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S"))
        for record in early:
            file_handler.handle(record)
        logger.addHandler(file_handler)
    return logger


def close_logger(logger):
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


def progress_bar(iterable, description, total, initial=0, enabled=True):
    """A tqdm bar on an interactive terminal (of the main process); elsewhere `iterable` itself."""
    if not (enabled and sys.stderr.isatty()):
        return iterable
    return tqdm(iterable, desc=description, initial=initial, total=total, leave=False, dynamic_ncols=True)
