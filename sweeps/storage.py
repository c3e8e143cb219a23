"""Where a sweep's study lives (`--storage`): SQLite in the sweep folder (one machine), a PostgreSQL or
MySQL database (many machines, Optuna's RDB storage with its heartbeat), or `journal:PATH` (Optuna's
journal file, for machines that share a filesystem but no database server).

A password in a URL is used to connect and never written anywhere: what sweep.json, the logs and
the table show is the URL without it (PostgreSQL also takes it from PGPASSWORD or ~/.pgpass)."""
import time
from dataclasses import dataclass
from pathlib import Path

from utils.errors import UserError, import_optional

DRIVERS = {"postgresql": ("psycopg", "psycopg[binary]"), "mysql": ("pymysql", "pymysql")}


@dataclass(frozen=True)
class StorageSpec:
    url: str  # what connects, password included
    kind: str  # "sqlite", "rdb" (a database server) or "journal"

    @property
    def public(self):
        """The URL without its password: what is recorded and shown."""
        return without_password(self.url) if self.kind == "rdb" else self.url


def without_password(url):
    from urllib.parse import urlsplit
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # not a URL: nothing to hide in it
        return url
    credentials, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{credentials.partition(':')[0]}@{host}").geturl()


def storage_spec(text, folder):
    """The storage of `--storage text` (None: study.db in the sweep `folder`)."""
    if text is None:
        return StorageSpec(f"sqlite:///{Path(folder).resolve() / 'study.db'}", "sqlite")
    if text.startswith("journal:"):
        path = Path(text.removeprefix("journal:")).expanduser()
        if not text.removeprefix("journal:") or path.is_dir():
            raise UserError(f"--storage {text}: expected journal:PATH, the journal file of the study")
        return StorageSpec(f"journal:{path.resolve()}", "journal")
    if text.startswith("sqlite:"):
        return StorageSpec(text, "sqlite")
    scheme = text.partition(":")[0].partition("+")[0]
    if scheme not in DRIVERS or "://" not in text:
        raise UserError(f"--storage {without_password(text)}: expected a postgresql://, mysql:// or sqlite:/// URL, "
                        "or journal:PATH")
    if "+" not in text.partition(":")[0]:  # the driver the README names, whichever SQLAlchemy would pick
        module, package = DRIVERS[scheme]
        import_optional(module, package, f"--storage {scheme}://")  # a one-line error naming the pip command
    return StorageSpec(text, "rdb")


def open_storage(spec, heartbeat=None, attempts=5):
    """Optuna's storage for `spec`; an RDB storage with a `heartbeat` (seconds) marks a trial whose
    worker stopped beating as failed, and Optuna's retry callback queues its parameters again.
    Workers that start at once on a fresh database race to create its tables: the losers try again."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if spec.kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        Path(spec.url.removeprefix("journal:")).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(spec.url.removeprefix("journal:")))
    options = {"engine_kwargs": {"connect_args": {"timeout": 300}}} if spec.kind == "sqlite" else {}
    if heartbeat:
        options.update(heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                       heartbeat_stale_trial_callback=retry_callback())
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(spec.url, **options)
        except Exception as error:  # the tables half-created by another worker: IntegrityError, ProgrammingError
            if attempt == attempts - 1 or "already exists" not in str(error) and "duplicate" not in str(error):
                raise
            time.sleep(0.2 * (attempt + 1))


def retry_callback():
    """Optuna's callback that queues a failed trial's parameters again, with its reported values
    (so that a retried trial gets the pruning decisions the first one got) and its attributes."""
    import warnings

    import optuna
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)
