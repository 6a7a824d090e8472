"""The config file (``ytun.settings``): the examples load, and every mistake is reported
naming the file and the key."""

from __future__ import annotations

import os
import pathlib
import shutil
import textwrap

import pytest

from ytun.settings import (
    CLIENT_KEYS,
    SERVER_KEYS,
    ConfigError,
    UsageError,
    check_listen_address,
    check_virtual_host,
    load_client_file,
    load_server_file,
)

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def write(tmp_path: pathlib.Path, text: str, name: str = "ytun.toml") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def examples(tmp_path: pathlib.Path) -> pathlib.Path:
    """The example files in a directory that also holds the identifier files they name."""
    for name in ("server.toml", "client.toml"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "app.identifier").write_text("app-secret\n")
    (tmp_path / "secrets" / "ssh.identifier").write_text("  ssh-secret  \n")
    return tmp_path


def test_server_example_loads(examples):
    loaded = load_server_file(examples / "server.toml")
    assert loaded.listen == ":443"
    assert loaded.hosts == {
        "app.example.com": "app-secret",
        "api.example.com": "app-secret",
        "staging.example.com": "staging-0f3a9c1e7b",
    }
    assert loaded.tcp == {":2222": "ssh-secret"}
    assert loaded.tls_cert == pathlib.Path("/etc/letsencrypt/live/tunnel.example.com/fullchain.pem")
    assert (loaded.idle_timeout, loaded.grace, loaded.max_connections) == (120.0, 5.0, 10000)
    assert loaded.forwarded_headers is True
    assert loaded.trust_forwarded == ["10.0.0.0/8", "fd00::/8"]
    assert loaded.access_log == "stdout"


@pytest.mark.parametrize(("text", "expected"), [("3", 3), ('"auto"', os.cpu_count() or 1)])
def test_workers_is_a_number_or_one_per_cpu(tmp_path, text, expected):
    assert load_server_file(write(tmp_path, f"[server]\nworkers = {text}\n")).workers == expected


def test_an_access_log_file_is_relative_to_the_config_file(tmp_path):
    loaded = load_server_file(write(tmp_path, '[server]\naccess_log = "logs/access.log"\n'))
    assert loaded.access_log == str(tmp_path / "logs" / "access.log")
    loaded = load_server_file(write(tmp_path, '[server]\naccess_log = "off"\n'))
    assert loaded.access_log == "off"


def test_client_example_loads(examples):
    loaded = load_client_file(examples / "client.toml")
    assert loaded.server == "tunnel.example.com:443"
    assert loaded.identifier == "app-secret"
    assert loaded.tcp_local == {2222: "127.0.0.1:22"}
    assert (loaded.tls, loaded.exit_on_refused, loaded.dial_timeout) == (True, True, 10.0)


@pytest.mark.parametrize(
    ("name", "keys"), [("server.toml", SERVER_KEYS), ("client.toml", CLIENT_KEYS)]
)
def test_examples_document_every_key(name, keys):
    text = (EXAMPLES / name).read_text()
    missing = [key for key in keys if f"{key} =" not in text and f"[{name[:-5]}.{key}]" not in text]
    assert not missing


def test_one_file_can_hold_both_tables(tmp_path):
    path = write(
        tmp_path,
        """
        [server]
        listen = ":8000"
        [client]
        server = "127.0.0.1:8000"
        identifier = "abc"
        """,
    )
    assert load_server_file(path).listen == ":8000"
    assert load_client_file(path).identifier == "abc"


def test_identifier_files_are_relative_to_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.id").write_text("from-the-file\n")
    path = write(
        tmp_path / "conf",
        """
        [server.hosts]
        "a.test" = { identifier_file = "app.id" }
        "b.test" = "inline-id"
        """,
    )
    monkeypatch.chdir(tmp_path)  # not the file's directory
    assert load_server_file(path).hosts == {"a.test": "from-the-file", "b.test": "inline-id"}


def test_identifiers_stay_out_of_repr(tmp_path):
    path = write(
        tmp_path,
        """
        [server.hosts]
        "a.test" = "hidden-server-secret"
        [client]
        server = "127.0.0.1:1"
        identifier = "hidden-client-secret"
        """,
    )
    assert "hidden" not in repr(load_server_file(path))
    assert "hidden" not in repr(load_client_file(path))


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[server]\nlisen = ":8000"', "server.lisen"),
        ('[sever]\nlisten = ":8000"', "sever"),
        ('[server.hosts]\n"a.test" = { identifer = "x" }', 'server.hosts."a.test".identifer'),
        ('[client]\nserver = "h:1"\ntls_cafile = "x"', "client.tls_cafile"),
    ],
    ids=["server-key", "table", "route-key", "client-key"],
)
def test_unknown_keys_name_the_key_and_the_file(tmp_path, text, named):
    path = write(tmp_path, text)
    section = "client" if "[client]" in text else "server"
    load = load_client_file if section == "client" else load_server_file
    with pytest.raises(ConfigError) as raised:
        load(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: unknown key ")
    assert repr(named) in message


def test_a_near_miss_is_suggested(tmp_path):
    with pytest.raises(ConfigError, match=r"did you mean 'server\.listen'"):
        load_server_file(write(tmp_path, '[server]\nlisen = ":8000"'))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen = 8000", "server.listen must be a string, got a number"),
        ('idle_timeout = "2m"', "server.idle_timeout must be a number of seconds, got a string"),
        ("stream_timeout = true", "server.stream_timeout must be a number of seconds, got a"),
        ("forwarded_headers = 1", "server.forwarded_headers must be true or false, got a number"),
        ("max_connections = 1.5", "server.max_connections must be a whole number, got a number"),
        ("max_connections = 0", "server.max_connections must be positive"),
        ("stream_timeout = 0", "server.stream_timeout must be more than zero seconds"),
        ("hosts = []", "server.hosts must be a table, got an array"),
        ('hosts = { "a.test" = 5 }', 'server.hosts."a.test" must be an identifier string'),
        ('hosts = { "a.test" = {} }', 'server.hosts."a.test" needs exactly one of identifier'),
        ('log_level = "loud"', "server.log_level must be one of debug, info, warning, error"),
        ('listen = "8000"', "server.listen needs HOST:PORT"),
        ('hosts = { "http://a.test" = "x" }', "takes a host name, not a URL"),
        ('tcp = { "nonsense" = "x" }', "server.tcp.nonsense must be HOST:PORT or :PORT"),
        ('trust_forwarded = "10.0.0.0/8"', "server.trust_forwarded must be an array of strings"),
        ("trust_forwarded = [10]", "server.trust_forwarded must hold strings, got a number"),
        ('trust_forwarded = ["10.0.0.0/33"]', "server.trust_forwarded must be an IP network"),
        ('access_log = ""', "server.access_log must not be empty"),
        ("workers = 0", "server.workers must be from 1 to 1024, or auto, got 0"),
        ("workers = true", 'server.workers must be a whole number or "auto", got a boolean'),
        ('workers = "all"', "server.workers must be a number of processes or auto, got 'all'"),
    ],
)
def test_wrong_server_values_name_the_key_and_the_file(tmp_path, text, message):
    path = write(tmp_path, f"[server]\n{text}\n")
    with pytest.raises(ConfigError) as raised:
        load_server_file(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server = 1", "client.server must be a string"),
        ('server = "nohost"', "client.server must be HOST:PORT"),
        ('identifier = "a"\nidentifier_file = "b"', "client.identifier and identifier_file"),
        ('tcp_local = { "ssh" = "127.0.0.1:22" }', "client.tcp_local.ssh is not a port number"),
        ("tcp_local = { 22 = 22 }", "client.tcp_local.22 must be a HOST:PORT string"),
        ('tls = "yes"', "client.tls must be true or false, got a string"),
        ("dial_timeout = -1", "client.dial_timeout must be more than zero seconds"),
    ],
)
def test_wrong_client_values_name_the_key_and_the_file(tmp_path, text, message):
    path = write(tmp_path, f"[client]\n{text}\n")
    with pytest.raises(ConfigError) as raised:
        load_client_file(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "No such file or directory"),
        ("", "is empty"),
        ("one\ntwo\n", "one identifier on one line"),
    ],
    ids=["missing", "empty", "two-lines"],
)
def test_unusable_identifier_files_are_named(tmp_path, content, message):
    if content is not None:
        (tmp_path / "app.id").write_text(content)
    path = write(tmp_path, '[client]\nidentifier_file = "app.id"\n')
    with pytest.raises(ConfigError) as raised:
        load_client_file(path)
    text = str(raised.value)
    assert text.startswith(f"{path}: client.identifier_file ")
    assert str(tmp_path / "app.id") in text
    assert message in text


def test_invalid_toml_names_the_file_and_the_line(tmp_path):
    path = write(tmp_path, '[server]\nlisten = ":8000"\nhosts = {\n')
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 3") as raised:
        load_server_file(path)
    assert str(raised.value).startswith(f"{path}: ")


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read the config file .*nothing\.toml: No such"):
        load_server_file(tmp_path / "nothing.toml")


def test_a_file_without_the_commands_table_says_so(tmp_path):
    path = write(tmp_path, '[client]\nserver = "127.0.0.1:1"\n')
    with pytest.raises(ConfigError, match=r"no \[server\] table"):
        load_server_file(path)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("http://a.test", "not a URL: write 'a.test', without http://"),
        ("https://a.test/x", "not a URL: write 'a.test', without https://"),
        ("a.test/x", "a path ('/x') cannot be routed"),
        ("a.test:http", "must be NAME or NAME:PORT"),
        ("a test", "must be a host name"),
        ("", "must be a host name"),
    ],
)
def test_virtual_hosts_are_names_not_urls(value, reason):
    with pytest.raises(UsageError, match=r"^--host ") as raised:
        check_virtual_host(value, "--host")
    assert reason in str(raised.value)


@pytest.mark.parametrize("value", ["a.test", "a.test:8000", "A.Test", "localhost"])
def test_virtual_hosts_accepted(value):
    assert check_virtual_host(value, "--host") == value


@pytest.mark.parametrize(
    ("value", "parsed"),
    [(":8000", (None, 8000)), ("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:8000", ("::1", 8000))],
)
def test_listen_addresses(value, parsed):
    assert check_listen_address(value, "--listen") == parsed


@pytest.mark.parametrize("value", ["8000", ":", ":99999", "host", "host:"])
def test_listen_addresses_refused(value):
    with pytest.raises(UsageError, match=r"^--listen "):
        check_listen_address(value, "--listen")


def test_a_bare_port_says_how_to_write_both_meanings():
    with pytest.raises(UsageError) as raised:
        check_listen_address("8000", "--listen")
    assert ":8000 for every interface" in str(raised.value)
    assert "127.0.0.1:8000 for this machine only" in str(raised.value)


def test_admin_keys_are_checked(tmp_path):
    loaded = load_server_file(
        write(tmp_path, '[server]\nadmin = "127.0.0.1:8001"\nadmin_token_file = "t"\n')
    )
    assert (loaded.admin, loaded.admin_token_file) == ("127.0.0.1:8001", tmp_path / "t")
    with pytest.raises(ConfigError, match=r"server\.admin needs HOST:PORT"):
        load_server_file(write(tmp_path, '[server]\nadmin = "8001"\n'))
    with pytest.raises(ConfigError, match=r"client\.register the admin API URL must be http"):
        load_client_file(write(tmp_path, '[client]\nregister = "ftp://x"\n'))


def test_with_register_a_missing_identifier_file_is_where_the_identifier_goes(tmp_path):
    text = '[client]\nregister = "http://127.0.0.1:8001"\nidentifier_file = "id"\n'
    loaded = load_client_file(write(tmp_path, text))
    assert (loaded.identifier, loaded.identifier_file) == (None, tmp_path / "id")
    (tmp_path / "id").write_text("kept\n")
    assert load_client_file(write(tmp_path, text)).identifier == "kept"
    (tmp_path / "id").unlink()
    with pytest.raises(ConfigError, match="identifier_file names an unusable file"):
        load_client_file(write(tmp_path, '[client]\nidentifier_file = "id"\n'))
