"""--logger csv: `metrics.csv` in the run folder, a row `tag,step,value` per scalar, in the order logged.

A resumed run keeps the rows its checkpoint had committed and continues the same file.
"""
import csv

from utils.atomic import atomic_open
from utils.errors import UserError


class CsvTracker:
    """`metrics.csv`: appended to on each commit. A resumed run keeps the first `keep` rows, those
    its checkpoint had committed (completing them from `redo`, the checkpoint's own commit, when
    the process was killed before that commit reached the file), and continues the same file."""
    name = "csv"
    requires = None  # (module, pip package) of an optional back end

    def __init__(self, path, keep=None, redo=()):
        self.path = path
        if keep is not None and path.is_file():
            with open(path, newline="") as handle:
                rows = list(csv.reader(handle))[:1 + keep]
            missing = 1 + keep - len(rows)
            if 0 < missing <= len(redo):
                rows += [[tag, step, repr(value)] for tag, step, value in redo[len(redo) - missing:]]
            with atomic_open(path, "w") as handle:
                csv.writer(handle, lineterminator="\n").writerows(rows)
        new = not path.is_file() or path.stat().st_size == 0
        try:
            self.handle = open(path, "a", newline="")
        except OSError as error:
            raise UserError(f"cannot write {path}: {error.strerror or error}") from None
        self.writer = csv.writer(self.handle, lineterminator="\n")
        if new:
            self.writer.writerow(["tag", "step", "value"])
            self.handle.flush()

    @property
    def where(self):
        """Where the run's values go, for the log."""
        return str(self.path)

    def log(self, events):
        rows = [(tag, step, repr(value)) for _, tag, step, value in (e for e in events if e[0] == "scalar")]
        if rows:
            self.writer.writerows(rows)
            self.handle.flush()

    def close(self, status):
        self.handle.close()
