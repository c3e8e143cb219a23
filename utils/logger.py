"""The console and `log.txt` show the same timestamped lines; other ranks speak only of problems."""
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


def setup_logger(name="torch_template", log_file=None, main_process=True):
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    logger.propagate = False
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
    console = _TqdmHandler(sys.stderr)
    console.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
    logger.addHandler(console)
    if log_file is not None:
        file_handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(file_handler)
    return logger


def close_logger(logger):
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
