"""``SqliteRegistry`` on its own: what survives a reopen (and a crash), what the file
holds (never an identifier), and every way a state file can be unusable, each a
``RegistryError`` naming the file and the reason, the file left as it was."""

from __future__ import annotations

import os
import pathlib
import sqlite3
import stat
import tempfile
from collections.abc import Iterator

import pytest

from ytun import RegistryError, SqliteRegistry
from ytun.registry import Route
from ytun.registry.sqlite import SCHEMA_VERSION

IDENTIFIERS = ("app-identifier-0f3a9c1e7b", "tcp-identifier-88d1e2", "ip-identifier-77ac")


def fill(registry: SqliteRegistry) -> None:
    registry.add_host("app.example.com", IDENTIFIERS[0])
    registry.add_host("api.example.com:8080", IDENTIFIERS[0])
    registry.add_host("gone.example.com", IDENTIFIERS[0])
    registry.delete_host("gone.example.com")
    registry.add_addr(5000, IDENTIFIERS[1])
    registry.add_addr(0, IDENTIFIERS[2], ip="10.1.2.3")


def test_every_route_survives_a_reopen(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ytun.db"
    with SqliteRegistry(path) as first:
        fill(first)
        hosts, tcp = first.hosts(), first.tcp_routes()
        keys = [first.key_for(identifier) for identifier in IDENTIFIERS]
    with SqliteRegistry(path) as again:
        assert (
            again.hosts()
            == hosts
            == [
                Route("host", "app.example.com", "app.example.com"),
                Route("host", "api.example.com:8080", "app.example.com"),
            ]
        )
        assert again.tcp_routes() == tcp
        # Same salt, so the same identifiers may connect and are the same clients.
        assert [again.owner(identifier) for identifier in IDENTIFIERS] == keys
        assert again.lookup_host("app.example.com:443") == keys[0]
        assert again.lookup_host("gone.example.com") is None
        assert again.lookup_addr("127.0.0.1", 5000) == keys[1]
        assert again.lookup_addr("10.1.2.3", 22) == keys[2]
        assert again.label(keys[1]) == "tcp:5000"


def test_deletions_survive_a_reopen(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ytun.db"
    with SqliteRegistry(path) as first:
        fill(first)
        first.delete_host("app.example.com")
        first.delete_addr(5000)
    with SqliteRegistry(path) as again:
        assert [route.name for route in again.hosts()] == ["api.example.com:8080"]
        assert again.owner(IDENTIFIERS[1]) is None
        assert again.lookup_addr("10.1.2.3", 1) == again.key_for(IDENTIFIERS[2])


def test_a_change_is_on_disk_when_the_method_returns(tmp_path: pathlib.Path) -> None:
    """The writer dies right after add_host, without closing: the host is there."""
    path = tmp_path / "ytun.db"
    pid = os.fork()
    if pid == 0:  # the child: write, then die without any cleanup
        code = 1
        try:
            registry = SqliteRegistry(path)
            registry.add_host("durable.example.com", IDENTIFIERS[0])
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with SqliteRegistry(path) as again:
        assert again.owner(IDENTIFIERS[0]) is not None
        assert again.lookup_host("durable.example.com") == again.key_for(IDENTIFIERS[0])


def test_the_file_holds_no_identifier(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ytun.db"

    def stored() -> bytes:
        return b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())

    with SqliteRegistry(path) as registry:
        fill(registry)
        while_open = stored()
        assert b"app.example.com" in while_open  # the check reads the right bytes
    after_close = stored()
    for identifier in IDENTIFIERS:
        for data in (while_open, after_close):
            assert identifier.encode() not in data
            assert identifier.encode("utf-16-le") not in data


def test_the_file_is_wal_mode_with_a_schema_version(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ytun.db"
    SqliteRegistry(path).close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        db.close()


def test_a_second_registry_on_the_same_file_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ytun.db"
    with SqliteRegistry(path) as first:
        first.add_host("app.example.com", IDENTIFIERS[0])
        with pytest.raises(RegistryError, match="another process"):
            SqliteRegistry(path)
        first.add_host("api.example.com", IDENTIFIERS[0])  # the owner carries on
    with SqliteRegistry(path) as again:
        assert len(again.hosts()) == 2


def test_a_closed_registry_refuses_writes_and_keeps_its_tables(tmp_path: pathlib.Path) -> None:
    registry = SqliteRegistry(tmp_path / "ytun.db")
    registry.add_host("app.example.com", IDENTIFIERS[0])
    registry.close()
    with pytest.raises(RegistryError, match="closed"):
        registry.add_host("new.example.com", IDENTIFIERS[1])
    assert registry.lookup_host("new.example.com") is None
    assert registry.owner(IDENTIFIERS[1]) is None


# -- unusable files ----------------------------------------------------------------------


def refused(path: pathlib.Path) -> str:
    with pytest.raises(RegistryError) as caught:
        SqliteRegistry(path)
    message = str(caught.value)
    assert str(path) in message
    return message


def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ytun.db"
    content = b"hosts: app.example.com\n" * 400
    path.write_bytes(content)
    assert "not a database" in refused(path)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ytun.db"]


def test_a_damaged_state_file_is_refused_untouched(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ytun.db"
    with SqliteRegistry(path) as registry:
        for n in range(300):  # several pages
            registry.add_host(f"host{n}.example.com", IDENTIFIERS[0])
    data = bytearray(path.read_bytes())
    assert len(data) > 3 * 4096
    data[4096 + 100 : 3 * 4096] = b"\xa5" * (2 * 4096 - 100)  # garble pages 2 and 3
    path.write_bytes(bytes(data))
    message = refused(path)
    assert "corrupt" in message or "malformed" in message
    assert path.read_bytes() == bytes(data)


def test_another_programs_database_is_refused_untouched(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (n INTEGER)")
    db.execute("INSERT INTO invoices VALUES (42)")
    db.commit()
    db.close()
    assert "not a ytun state file" in refused(path)
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT n FROM invoices").fetchall() == [(42,)]
        tables = db.execute("SELECT name FROM sqlite_master").fetchall()
        assert tables == [("invoices",)]
    finally:
        db.close()


def test_a_newer_schema_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ytun.db"
    SqliteRegistry(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    assert "newer" in refused(path)


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("UPDATE hosts SET key = 'not-a-digest'", "client key"),
        ("UPDATE meta SET value = 'zz' WHERE name = 'salt'", "salt"),
        ("DELETE FROM meta", "salt"),
        ("DROP TABLE tcp_routes", "missing table tcp_routes"),
        ("DELETE FROM schema_version", "no schema version"),
    ],
)
def test_a_state_file_with_bad_contents_is_refused(
    tmp_path: pathlib.Path, sql: str, reason: str
) -> None:
    path = tmp_path / "ytun.db"
    with SqliteRegistry(path) as registry:
        registry.add_host("app.example.com", IDENTIFIERS[0])
    db = sqlite3.connect(path)
    db.execute(sql)
    db.commit()
    db.close()
    assert reason in refused(path)


def test_a_missing_directory_is_refused(tmp_path: pathlib.Path) -> None:
    assert "unable to open" in refused(tmp_path / "no-such-dir" / "ytun.db")
    assert not (tmp_path / "no-such-dir").exists()


def test_a_path_under_a_file_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "plain").write_text("x")
    refused(tmp_path / "plain" / "ytun.db")


def _open_as_unprivileged(path: pathlib.Path) -> str:
    """Open ``path`` as a user who may not write its directory: ``nobody`` in a forked
    child when the tests run as root (root writes anywhere), else this user."""
    if os.geteuid() != 0:
        try:
            SqliteRegistry(path).close()
        except RegistryError as exc:
            return str(exc)
        return "opened"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            try:
                SqliteRegistry(path).close()
                answer = "opened"
            except RegistryError as exc:
                answer = str(exc)
            os.write(write, answer.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    return answer


@pytest.fixture
def read_only_dir() -> Iterator[pathlib.Path]:
    # Not tmp_path: its parents are private to the test user, and the check may run as
    # another user (nobody) who must reach the directory, yet not write it.
    path = pathlib.Path(tempfile.mkdtemp(prefix="ytun-ro-"))
    yield path
    path.chmod(stat.S_IRWXU)
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "existing-file"])
def test_an_unwritable_directory_is_refused(read_only_dir: pathlib.Path, existing: bool) -> None:
    path = read_only_dir / "ytun.db"
    if existing:
        with SqliteRegistry(path) as registry:
            registry.add_host("app.example.com", IDENTIFIERS[0])
        path.chmod(0o644)
    before = path.read_bytes() if existing else None
    read_only_dir.chmod(0o555)
    answer = _open_as_unprivileged(path)
    assert answer != "opened"
    assert str(path) in answer
    assert "may this user write" in answer
    assert (path.read_bytes() if existing else None) == before
