"""A registry that survives restarts: SQLite (stdlib ``sqlite3``) behind the memory tables.

Reads come from the in-memory tables loaded at open (no I/O on the request path). Every
change is written to the file first, in WAL mode with ``synchronous=FULL``, so it is on
disk when the method returns; only then does memory change, so a failed write leaves both
as they were and raises :class:`~ytun.errors.RegistryError`.

One process owns the file: the connection holds SQLite's exclusive lock from open to
close (``locking_mode=EXCLUSIVE``), so a second server on the same file fails at start
instead of both diverging. A file that is not a ytun state file (corrupt, another
program's database, a newer schema) is refused, never rewritten.

Schema (version 1): ``schema_version(version)``; ``meta(name, value)`` with the hex
``salt`` of client keys; ``hosts(host, key)``; ``tcp_routes(port, ip, key)``, where a
port route has ``ip = ''`` and an IP route has ``port = 0``. Rows keep the order they
were added (rowid), which is the order ``hosts()`` and ``label()`` use.
"""

from __future__ import annotations

import os
import re
import secrets
import sqlite3
from pathlib import Path
from typing import NoReturn

from ..errors import RegistryError
from .memory import SALT_SIZE, MemoryRegistry

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE hosts (host TEXT PRIMARY KEY, key TEXT NOT NULL);
CREATE TABLE tcp_routes (
    port INTEGER NOT NULL,
    ip TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (port, ip)
);
"""

_KEY = re.compile(r"[0-9a-f]{64}")
#: Seconds to wait for the file's lock: a second server on the same file fails fast.
LOCK_TIMEOUT = 1.0


class SqliteRegistry(MemoryRegistry):
    """Routes kept in the SQLite file ``path`` (created with its directory's permissions
    if missing). Raises :class:`~ytun.errors.RegistryError` if the file cannot be used."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        super().__init__(salt=b"\0")  # replaced by the stored salt below
        try:
            self._db = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT, isolation_level=None)
            self._open(self._db)
        except sqlite3.Error as exc:
            self.close()
            raise RegistryError(f"state file {self.path}: {_reason(exc)}") from exc
        except RegistryError:
            self.close()
            raise

    # -- opening -------------------------------------------------------------------------

    def _open(self, db: sqlite3.Connection) -> None:
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RegistryError(f"state file {self.path}: cannot use WAL mode ({mode})")
        db.execute("PRAGMA synchronous = FULL")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise RegistryError(f"state file {self.path} is corrupt: {check}")
        # A write transaction at once: proves the file is writable and takes the lock.
        db.execute("BEGIN IMMEDIATE")
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            if not tables:
                for statement in _SCHEMA.split(";"):  # not executescript: it would commit
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
                db.execute(
                    "INSERT INTO meta VALUES ('salt', ?)", (secrets.token_bytes(SALT_SIZE).hex(),)
                )
            else:
                self._check_schema(db, tables)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._load(db)

    def _check_schema(self, db: sqlite3.Connection, tables: set[str]) -> None:
        if "schema_version" not in tables:
            raise RegistryError(
                f"state file {self.path} is an SQLite database but not a ytun state file; "
                "give another path"
            )
        row = db.execute("SELECT max(version) FROM schema_version").fetchone()
        version = row[0] if row else None
        if not isinstance(version, int):
            raise RegistryError(f"state file {self.path} is corrupt: no schema version")
        if version > SCHEMA_VERSION:
            raise RegistryError(
                f"state file {self.path} has schema version {version}, written by a newer "
                f"ytun (this one reads version {SCHEMA_VERSION}); upgrade ytun"
            )
        missing = {"meta", "hosts", "tcp_routes"} - tables
        if missing:
            raise RegistryError(
                f"state file {self.path} is corrupt: missing table {', '.join(sorted(missing))}"
            )

    def _load(self, db: sqlite3.Connection) -> None:
        row = db.execute("SELECT value FROM meta WHERE name = 'salt'").fetchone()
        try:
            salt = bytes.fromhex(row[0]) if row and isinstance(row[0], str) else b""
        except ValueError:
            salt = b""
        if len(salt) != SALT_SIZE:
            raise RegistryError(f"state file {self.path} is corrupt: no valid salt")
        self.salt = salt
        for host, key in db.execute("SELECT host, key FROM hosts ORDER BY rowid"):
            if not isinstance(host, str) or not host:
                self._corrupt("a host that is not text")
            self._set_host(host, self._key(key))
        for port, ip, key in db.execute("SELECT port, ip, key FROM tcp_routes ORDER BY rowid"):
            if not isinstance(port, int) or not isinstance(ip, str):
                self._corrupt("a TCP route with a bad port or IP")
            self._set_addr(port, ip or None, self._key(key))

    def _key(self, key: object) -> str:
        if not isinstance(key, str) or _KEY.fullmatch(key) is None:
            self._corrupt("a route whose client key is not a SHA-256 digest")
        return key

    def _corrupt(self, what: str) -> NoReturn:
        raise RegistryError(f"state file {self.path} is corrupt: {what}")

    # -- writing through -----------------------------------------------------------------

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        if self._db is None:
            raise RegistryError(f"state file {self.path} is closed")
        try:
            with self._db:  # BEGIN ... COMMIT, durable (synchronous=FULL) on return
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise RegistryError(f"cannot write state file {self.path}: {_reason(exc)}") from exc

    def _store_host(self, host: str, key: str | None) -> None:
        if key is None:
            self._write("DELETE FROM hosts WHERE host = ?", (host,))
        else:
            self._write("INSERT OR REPLACE INTO hosts (host, key) VALUES (?, ?)", (host, key))

    def _store_addr(self, port: int, ip: str | None, key: str | None) -> None:
        row = (0, ip) if ip is not None else (port, "")
        if key is None:
            self._write("DELETE FROM tcp_routes WHERE port = ? AND ip = ?", row)
        else:
            self._write(
                "INSERT OR REPLACE INTO tcp_routes (port, ip, key) VALUES (?, ?, ?)", (*row, key)
            )

    def problem(self) -> str | None:
        """The state file must still answer a read (the path is not told: the answer
        may go to a public health probe)."""
        if self._db is None:
            return "the state file is closed"
        try:
            self._db.execute("SELECT 1 FROM hosts LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            return f"the state file cannot be read: {exc}"
        return None

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()


def _reason(exc: sqlite3.Error) -> str:
    """SQLite's own words, with the usual cause of the vague ones."""
    text = str(exc)
    if "unable to open" in text:
        return f"{text} (does the directory exist, and may this user write to it?)"
    if "not a database" in text:
        return f"{text} (it is not a SQLite file, or it is damaged; it was left untouched)"
    if "locked" in text:
        return f"{text} (another process, such as a second server, has it open)"
    if "disk I/O error" in text:
        return f"{text} (WAL mode writes a -wal file next to the file: may this user write there?)"
    if "readonly" in text:
        return f"{text} (this user may not write the file or its directory)"
    return text
