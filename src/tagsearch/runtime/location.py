"""Where studies live, as one value parsed once at the boundary: ``Location`` (the URL, its scheme,
the local file behind it, the URL with its password masked for display, and the folder where the
study's spec, the host's embeddings and the locks are kept).

Supported URLs (see ``docs/storages.md``)::

    sqlite:///storage/tagsearch.db        file relative to the working directory (four slashes: absolute)
    postgresql://user:pw@host:5432/db     any SQLAlchemy URL Optuna's RDBStorage takes
    mysql+pymysql://user:pw@host/db
    journal:///storage/tagsearch.log      Optuna JournalFileBackend (a log file; four slashes: absolute)
    redis://host:6379/0                   Optuna JournalRedisBackend (``rediss://`` for TLS)
    grpc://host:13000                     a ``tagsearch storage-proxy`` (Optuna's gRPC storage proxy)

The functions below (``scheme``, ``local_path``, ``masked``...) answer for a URL string where a
caller has no ``Location``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from tagsearch.errors import UserError

RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
JOURNAL_SCHEMES = ("journal", "redis", "rediss")
PROXY_SCHEMES = ("grpc",)
SERVER_SCHEMES = ("postgresql", "mysql", "redis", "rediss", "grpc")
DEFAULT_ARTIFACTS = Path("storage/artifacts")
STORAGE_ENV = "TAGSEARCH_STORAGE"  # a storage URL kept off command lines (launch passes one with a password so)
MASK = "***"


@dataclass(frozen=True)
class Location:
    """A storage URL, parsed and checked once (``Location.of``)."""

    url: str
    scheme: str
    file: Path | None  # the file behind a sqlite:/// or journal:/// URL (None for servers and in-memory)

    @classmethod
    def of(cls, url: str | Location) -> Location:
        """``url`` parsed (a ``Location`` as it is); a UserError when it is not a storage URL."""
        return url if isinstance(url, Location) else _parse(url)

    @functools.cached_property
    def masked(self) -> str:
        """The URL with any password replaced by ``***``: what logs, specs and reports show."""
        return masked(self.url)

    @property
    def has_secret(self) -> bool:
        """Whether the URL carries a password (what ``masked`` hides)."""
        return self.masked != self.url

    def secret_env(self) -> dict:
        """The environment that hands the URL to a worker instead of its argv ({} without a password)."""
        return {STORAGE_ENV: self.url} if self.has_secret else {}

    @property
    def folder(self) -> Path:
        """The folder of a local storage file, else storage/: where what belongs beside a study is
        kept (tune's spec of it, the host's encoder embeddings, the file locks)."""
        return Path("storage") if self.file is None else self.file.parent

    @property
    def artifacts(self) -> Path:
        """Where the FileSystemArtifactStore of this storage lives: ``dir/x.db`` → ``dir/x-artifacts``
        for local files, else ``storage/artifacts``."""
        return DEFAULT_ARTIFACTS if self.file is None else self.file.with_name(f"{self.file.stem}-artifacts")

    @property
    def embeddings(self) -> Path:
        """Where encoders' embeddings of a corpus persist on this host, shared by its workers."""
        return self.folder / "embeddings"


@functools.lru_cache(maxsize=64)
def _parse(url: str) -> Location:
    return Location(url, scheme(url), local_path(url))


def scheme(url: str) -> str:
    """``"mysql+pymysql://..."`` → ``"mysql"``; a UserError when ``url`` is not a storage URL."""
    if not isinstance(url, str) or "://" not in url:
        raise UserError(f"storage {url!r} is not a URL; expected e.g. sqlite:///storage/tagsearch.db, "
                        f"postgresql://user@host/db, journal:///storage/tagsearch.log, redis://host:6379/0 "
                        f"or grpc://host:port")
    name = url.split("://", 1)[0].split("+", 1)[0].lower()
    if name not in RDB_SCHEMES + JOURNAL_SCHEMES + PROXY_SCHEMES:
        raise UserError(f"storage {masked(url)!r} has unsupported scheme {name!r}; expected one of "
                        f"{', '.join(RDB_SCHEMES + JOURNAL_SCHEMES + PROXY_SCHEMES)}")
    return name


def local_path(url: str) -> Path | None:
    """The file behind a ``sqlite:///`` or ``journal:///`` URL (None for servers and in-memory)."""
    kind = scheme(url)
    if kind not in ("sqlite", "journal"):
        return None
    rest = url.split("://", 1)[1].split("?", 1)[0]
    if kind == "sqlite" and rest in ("", "/:memory:"):
        return None
    if not rest.startswith("/") or len(rest) < 2:
        raise UserError(f"storage {url!r} has no file path; expected {kind}:///relative/file or "
                        f"{kind}:////absolute/file")
    return Path(rest[1:])


def storage_dir(url: str) -> Path:
    """The folder of a local storage file, else storage/: where what belongs beside a study is kept
    (tune's spec of it, the host's encoder embeddings)."""
    return Location.of(url).folder


def artifact_dir(url: str) -> Path:
    """Where the FileSystemArtifactStore of this storage lives: ``dir/x.db`` → ``dir/x-artifacts``
    for local files, else ``storage/artifacts``."""
    return Location.of(url).artifacts


def artifact_store(url: str):
    """The ``optuna.artifacts.FileSystemArtifactStore`` for ``url`` (its folder is created)."""
    from optuna.artifacts import FileSystemArtifactStore

    folder = artifact_dir(url)
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(folder)


def masked(url: str) -> str:
    """``url`` with any password replaced by ``***`` (SQLAlchemy's own rendering where it parses)."""
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError, TypeError):
        parsed = None
    if parsed is not None and parsed.password is not None:
        return parsed.render_as_string(hide_password=True)
    head, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{head}{sep}{userinfo.split(':', 1)[0]}:***@{host}"


def has_secret(url: str) -> bool:
    """Whether ``url`` carries a password (what ``masked`` hides)."""
    return Location.of(url).has_secret


def secret_env(url: str) -> dict:
    """The environment that hands ``url`` to a worker instead of its argv, or {} when it has no password."""
    return Location.of(url).secret_env()


def proxy_address(url: str) -> tuple[str, int]:
    """``grpc://host:port`` → ``("host", port)`` (a UserError when either is missing)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port or parts.path.strip("/"):
        raise UserError(f"storage {url!r} is not a proxy address; expected grpc://HOST:PORT of a "
                        f"'tagsearch storage-proxy'")
    return host, port
