"""A CSV of predictions, one row per input, streamed to disk and continued after an interruption.

Both evaluators' prediction modes write through `StreamedCsv`: rows go to `<csv>.partial` in input
order as they are ready (`RowWriter`, with at most AHEAD rows waiting, so memory stays flat in the
number of inputs); a second call with the same output and the same `made_by` continues after the
last complete row (`continued_rows`, which reads the partial file as a stream); the finished file
replaces the partial one atomically (`finish_csv`), byte for byte what an uninterrupted call
writes. Progress (`ImageProgress`) is a bar on a terminal and a log line every N inputs elsewhere.
"""
import csv
import gzip
import json
import os
import shutil
import sys
import time
from collections import deque
from itertools import takewhile

from utils.atomic import atomic_open, write_json_atomic
from utils.errors import UserError


class StreamedCsv:
    """The CSV at `path` with the first line `header`, whose rows are made as `made_by` (a dict of
    plain values) says. `encode`, when given, turns a row's value into its text on THREADS threads."""

    def __init__(self, path, header, made_by, log, encode=None):
        self.path, self.header, self.made_by, self.log, self.encode = path, header, made_by, log, encode
        self.partial = path.with_name(path.name + ".partial")
        if path.is_dir():
            raise UserError(f"{path} is a folder; expected the name of the CSV file to write, such as {path}/<name>.csv")

    def write(self, names, predict, progress_every):
        """One row per name of `names`: `predict(start, rows)` adds the rows of `names[start:]`, in
        order, to `rows` (a RowWriter). Returns the seconds `predict` took."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the output folder for {self.path}: {error.strerror or error}") from None
        done = continued_rows(self.partial, names, self.made_by, self.header)
        if done:
            self.log.info(f"continuing {self.partial}: {done} of {len(names)} inputs are done")
        progress = ImageProgress(len(names), done, self.log, progress_every)
        has_header = self.partial.stat().st_size > 0
        try:
            with open(self.partial, "a", newline="") as handle, RowWriter(handle, progress, self.encode) as rows:
                if not has_header:
                    handle.write(self.header + "\n")
                started = time.perf_counter()
                if done < len(names):  # all rows may be there already, from an interruption just before the end
                    predict(done, rows)
                seconds = time.perf_counter() - started
        except (KeyboardInterrupt, SystemExit):
            self.log.warning(f"interrupted: {self.partial} keeps the {progress.done} rows written; the same command "
                             "continues it")
            raise
        except OSError as error:
            raise UserError(f"cannot write {self.partial}: {error.strerror or error}; the rows written so far "
                            "are kept, and the same command continues it") from None
        finally:
            progress.close()
        finish_csv(self.partial, self.path)
        return seconds


class Done:
    """A row's text already made, read like a finished future."""

    def __init__(self, text):
        self.text = text

    def result(self):
        return self.text

    def done(self):
        return True


class RowWriter:
    """Rows written in order as their texts are ready: made by `encode` on THREADS threads (RLE
    masks), or given ready. At most AHEAD rows wait, so memory does not grow with the number of rows."""

    AHEAD, THREADS = 64, 4

    def __init__(self, handle, progress, encode=None):
        from concurrent.futures import ThreadPoolExecutor
        self.handle, self.progress, self.encode, self.ahead = handle, progress, encode, self.AHEAD
        self.pool = ThreadPoolExecutor(max_workers=self.THREADS) if encode is not None else None
        self.pending = deque()

    def add(self, name, value):
        """Queue the row of input `name`: `value` encoded (with `encode`), or as it is; None is empty."""
        if value is None:
            text = Done("")
        elif self.encode is not None:
            text = self.pool.submit(self.encode, value)
        else:
            text = Done(value)
        self.pending.append((name, text))
        if len(self.pending) > self.ahead:
            self.write(len(self.pending) - self.ahead)

    def write(self, count):
        for _ in range(count):
            name, text = self.pending.popleft()
            self.handle.write(f"{csv_field(name)},{text.result()}\n")
        self.handle.flush()  # a complete row survives an interruption
        self.progress.update(count)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        try:
            if kind is None:
                self.write(len(self.pending))
            else:  # the rows made so far are kept, in order; the rest is redone when continued
                self.write(sum(1 for _ in takewhile(lambda item: item[1].done(), self.pending)))
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)


class ImageProgress:
    """Progress in inputs: a bar on a terminal; elsewhere (a batch job's log) a line every `every`
    inputs, at least every LINE_EVERY_S seconds while rows come, and at the end."""

    LINE_EVERY_S = 30.0

    def __init__(self, total, done, log, every=1000):
        from tqdm import tqdm
        self.total, self.done, self.log, self.every = total, done, log, every
        self.last_line, self.last_done = time.monotonic(), done
        self.bar = tqdm(total=total, initial=done, unit="image", desc="predict", dynamic_ncols=True) \
            if sys.stderr.isatty() else None

    def update(self, count):
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        due = self.done - self.last_done >= self.every or time.monotonic() - self.last_line >= self.LINE_EVERY_S
        if count and (due or self.done == self.total):
            self.last_line, self.last_done = time.monotonic(), self.done
            self.log.info(f"predicted {self.done} of {self.total} images")

    def close(self):
        if self.bar is not None:
            self.bar.close()


class CompleteLines:
    """The lines of a binary file that end in a line break, decoded, and the byte offset after the
    last one handed out: a line an interruption cut short is never read."""

    def __init__(self, handle):
        self.handle, self.offset, self.cut = handle, 0, False

    def __iter__(self):
        for line in self.handle:
            if not line.endswith(b"\n"):
                self.cut = True
                return
            self.offset += len(line)
            yield line.decode("utf-8", errors="replace")


def continued_rows(partial, names, made_by, header="img,rle_mask"):
    """How many inputs a partial CSV holds complete rows for, after cutting off a row an interruption
    left half-written. Its rows must be those of the first `names`, and made as `made_by` says
    (recorded beside it, in <partial>.json). The file is read as a stream, row by row: a partial
    file of Kaggle's 100,064 masks is gigabytes."""
    record = partial.with_name(partial.name + ".json")
    if not partial.is_file():
        write_json_atomic(made_by, record)
        partial.touch()
        return 0
    try:
        recorded = json.loads(record.read_text()) if record.is_file() else None
    except ValueError:
        raise UserError(f"{record} is not readable JSON (a write cut short?); delete it and {partial} "
                        "to start the CSV over") from None
    if recorded != made_by:
        changed = sorted(key for key in made_by if (recorded or {}).get(key) != made_by[key])
        raise UserError(f"{partial} was started with another {', '.join(changed)}; continue it with the same "
                        "checkpoint and options, or delete it to start over")
    with open(partial, "rb") as handle:
        lines = CompleteLines(handle)
        done, end = matching_rows(csv.reader(lines), lines, names, header, partial)
    if done is None:
        with open(partial, "w", newline=""):
            pass  # nothing usable: start over
        return 0
    if end != partial.stat().st_size:
        with open(partial, "r+b") as handle:
            handle.truncate(end)
    return done


def matching_rows(rows, lines, names, header, partial):
    """(complete rows, the byte offset after the last) of a partial CSV, whose rows must name the
    first `names` in order; (None, 0) when its first line is not `header`."""
    first = next(rows, None)
    if first is None or first != next(csv.reader([header])):
        return None, 0
    done, end = 0, lines.offset
    try:
        for row in rows:
            if not row or done >= len(names) or row[0] != names[done]:
                raise UserError(f"{partial} holds rows of other inputs than the first {done + 1} in the input "
                                "folder; delete it to start over")
            done, end = done + 1, lines.offset
    except csv.Error:  # a quoted name cut short by the interruption: its row is redone
        pass
    return done, end


def csv_field(text):
    """`text` as one CSV field: quoted, its quotes doubled, when it holds a comma, a quote or a line break."""
    if not any(char in text for char in ',"\r\n'):
        return text
    return '"' + text.replace('"', '""') + '"'


def finish_csv(partial, path):
    """Move the complete CSV into place atomically; gzipped (reproducibly: no name, no time) for .gz."""
    if path.suffix.lower() == ".gz":
        with atomic_open(path, "wb") as handle, open(partial, "rb") as source, \
                gzip.GzipFile(filename="", mode="wb", fileobj=handle, mtime=0) as packed:
            shutil.copyfileobj(source, packed)
        partial.unlink()
    else:
        os.replace(partial, path)
    partial.with_name(partial.name + ".json").unlink(missing_ok=True)
