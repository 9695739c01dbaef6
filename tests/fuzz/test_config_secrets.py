"""Secrets in the site configuration: the MQTT password and the database password, given
inline, as a file (``password_file``, e.g. a systemd credential) or an environment variable
(``password_env``); never in a repr, a problem or ``vpp check-config``'s output."""

from __future__ import annotations

import copy
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEMO_CONFIG
from vpp.config import ConfigError, SiteConfig, load_config, mask_url, parse_config

SECRET = "pa:ss@w/rd%-S3cret"  # URL-unsafe on purpose


def demo() -> dict[str, Any]:
    return tomllib.loads(DEMO_CONFIG.read_text(encoding="utf-8"))


def with_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The demo with the MQTT password in a file and the database's in the environment."""
    (tmp_path / "mqtt-password").write_text(SECRET + "\n", encoding="utf-8")
    monkeypatch.setenv("VPP_DB_PASSWORD", SECRET)
    d = demo()
    d["mqtt"].update(username="vpp", password_file=str(tmp_path / "mqtt-password"))
    d["storage"].update(url="postgresql+psycopg://vpp@db.example:5432/vpp",
                        password_env="VPP_DB_PASSWORD")
    return d


def assert_hidden(cfg: SiteConfig) -> None:
    for text in (repr(cfg), str(cfg), repr(cfg.mqtt), repr(cfg.storage), str(cfg.storage),
                 cfg.model_dump_json(), str(cfg.storage.masked_url)):
        assert SECRET not in text, text


def test_a_password_file_and_a_password_variable_are_read_and_hidden(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_config(with_secrets(tmp_path, monkeypatch))
    assert cfg.mqtt.password is not None
    assert cfg.mqtt.password.get_secret_value() == SECRET  # the file's newline is not in it
    assert cfg.storage.password is not None
    assert cfg.storage.password.get_secret_value() == SECRET
    url = cfg.storage.connect_url()
    assert url == "postgresql+psycopg://vpp:pa%3Ass%40w%2Frd%25-S3cret@db.example:5432/vpp"
    from sqlalchemy.engine import make_url
    assert make_url(url).password == SECRET  # what the driver gets back
    assert cfg.storage.masked_url == cfg.storage.url == (
        "postgresql+psycopg://vpp@db.example:5432/vpp")
    assert_hidden(cfg)


def test_a_password_inside_the_url_is_masked_wherever_it_is_shown() -> None:
    d = demo()
    d["storage"]["url"] = "postgresql+psycopg://vpp:S3cret-inline@db:5432/vpp"
    d["mqtt"]["password"] = "S3cret-mqtt"
    cfg = parse_config(d)
    assert cfg.storage.connect_url() == d["storage"]["url"]
    assert cfg.storage.masked_url == "postgresql+psycopg://vpp:***@db:5432/vpp"
    for text in (repr(cfg), str(cfg), repr(cfg.storage)):
        assert "S3cret" not in text


@pytest.mark.parametrize(("url", "masked"), [
    ("postgresql+psycopg://u:p@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
    ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),  # an unescaped @ in it
    ("postgresql://u@h/db?password=p&sslmode=require",
     "postgresql://u@h/db?password=***&sslmode=require"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
    ("sqlite:////var/lib/vpp/vpp.sqlite", "sqlite:////var/lib/vpp/vpp.sqlite"),
    ("not a url :p@", "not a url :p@"),
])
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d, p: d["mqtt"].update(password="x", password_file=str(p)),
     "mqtt.password_file: give one of password, password_file, password_env, not password and "
     "password_file"),
    (lambda d, p: d["mqtt"].update(password_file="/nonexistent/mqtt-password"),
     "mqtt.password_file: cannot read '/nonexistent/mqtt-password': No such file or directory"),
    (lambda d, p: d["mqtt"].update(password_env="VPP_NOT_SET_ANYWHERE"),
     "mqtt.password_env: environment variable 'VPP_NOT_SET_ANYWHERE' is not set"),
    (lambda d, p: d["mqtt"].update(password_env="not a name"), "mqtt.password_env"),
    (lambda d, p: d["storage"].update(password_file=str(p)),
     "storage.password_file: password_file needs url (a PostgreSQL URL)"),
    (lambda d, p: d["storage"].update(url="sqlite:////tmp/x.sqlite", password_file=str(p)),
     "storage.password_file: password_file is for PostgreSQL"),
    (lambda d, p: d["storage"].update(url="postgresql://u:inline@h/db", password_file=str(p)),
     "storage.url: the URL holds a password and password_file gives one"),
])
def test_a_secret_given_wrongly_is_named_without_showing_it(tmp_path: Path, mutate: Any,
                                                           expected: str) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET, encoding="utf-8")
    d = demo()
    mutate(d, secret_file)
    with pytest.raises(ConfigError) as exc:
        parse_config(d)
    assert any(p.startswith(expected) for p in exc.value.problems), exc.value.problems
    assert SECRET not in str(exc.value)


@pytest.mark.parametrize(("content", "expected"), [
    (b"", "is empty"), (b"\n", "is empty"), (b"\xff\xfe", "is not UTF-8 text"),
    (b"x" * 5000, "is longer than 4096 bytes"),
])
def test_a_password_file_that_holds_no_password_is_refused(tmp_path: Path, content: bytes,
                                                           expected: str) -> None:
    f = tmp_path / "pw"
    f.write_bytes(content)
    d = demo()
    d["mqtt"]["password_file"] = str(f)
    with pytest.raises(ConfigError) as exc:
        parse_config(d)
    assert exc.value.fields == ["mqtt.password_file"]
    assert expected in exc.value.problems[0]


@pytest.mark.parametrize("mutate", [
    lambda d: d["pcc"].update(export_cap_w=-1),  # any other problem beside the secrets
    lambda d: d["storage"].update(url=d["storage"]["url"].replace("postgresql+psycopg", "mysql")),
    lambda d: d["storage"].update(url=d["storage"]["url"].replace(":5432", ":port")),
    lambda d: d["mqtt"].update(password=12345678, password_file=None),
    lambda d: d["mqtt"].update(password=[SECRET], password_file=None),
    lambda d: d["mqtt"].update(pasword=SECRET),  # a misspelt key: its value is not shown
    lambda d: d["storage"].update(password_secret=SECRET),
])
def test_no_problem_shows_a_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   mutate: Any) -> None:
    d = with_secrets(tmp_path, monkeypatch)
    d["storage"]["url"] = "postgresql+psycopg://vpp:S3cretInUrl@db:5432/vpp"
    del d["storage"]["password_env"]
    mutate(d)
    with pytest.raises(ConfigError) as exc:
        parse_config(copy.deepcopy(d))
    for text in (str(exc.value), repr(exc.value), *exc.value.problems):
        assert all(s not in text for s in (SECRET, "S3cretInUrl", "12345678")), text


def _check_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os
    return subprocess.run([sys.executable, "-m", "vpp.cli", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **env})


def test_check_config_shows_no_secret_given_by_file_or_variable(tmp_path: Path) -> None:
    (tmp_path / "mqtt-password").write_text(SECRET, encoding="utf-8")
    site = tmp_path / "site.toml"
    site.write_text(DEMO_CONFIG.read_text(encoding="utf-8").replace(
        'topic_prefix = "vpp"', f'topic_prefix = "vpp"\nusername = "vpp"\n'
        f'password_file = "{tmp_path / "mqtt-password"}"').replace(
        "telemetry_interval_s = 60", 'telemetry_interval_s = 60\n'
        'url = "postgresql+psycopg://vpp@db.example:5432/vpp"\n'
        'password_env = "VPP_DB_PASSWORD"'), encoding="utf-8")
    ok = _check_config(site, {"VPP_DB_PASSWORD": SECRET})
    assert ok.returncode == 0, ok.stderr
    assert SECRET not in ok.stdout + ok.stderr
    bad = _check_config(site, {})  # the variable unset: named, and still nothing shown
    assert bad.returncode == 1
    assert "storage.password_env: environment variable 'VPP_DB_PASSWORD' is not set" in (
        bad.stderr)
    assert SECRET not in bad.stdout + bad.stderr


def test_check_config_masks_a_password_written_into_the_url(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(DEMO_CONFIG.read_text(encoding="utf-8").replace(
        "telemetry_interval_s = 60", 'telemetry_interval_s = 60\n'
        'url = "postgresql+psycopg://vpp:S3cret-inline@db.example:5432/vpp"'),
        encoding="utf-8")
    ok = _check_config(site, {})
    assert ok.returncode == 0, ok.stderr
    assert "S3cret-inline" not in ok.stdout + ok.stderr


def test_a_site_file_with_secrets_loads_from_disk(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPP_MQTT_PASSWORD", SECRET)
    site = tmp_path / "site.toml"
    site.write_text(DEMO_CONFIG.read_text(encoding="utf-8").replace(
        'topic_prefix = "vpp"', 'topic_prefix = "vpp"\npassword_env = "VPP_MQTT_PASSWORD"'),
        encoding="utf-8")
    cfg = load_config(site)
    assert cfg.mqtt.password is not None and cfg.mqtt.password.get_secret_value() == SECRET
    assert_hidden(cfg)
