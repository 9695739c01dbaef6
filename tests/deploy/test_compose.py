"""deploy/compose and deploy/container: the compose file holds together (every service has
an image or a build, every host path it mounts is in the repository, names resolve), the
controller's site file is the realistic example with the compose addresses, Prometheus
scrapes the controller service (promtool checks the configuration as the container sees
it), Grafana's provisioning loads the repository's dashboard from Prometheus, Mosquitto
runs its configuration and its ACL holds, and the Containerfile builds what compose runs.

No container engine runs here: nothing is built or started but Mosquitto, run from the
mounted files by the Debian binary.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import socket
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import aiomqtt
import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.conftest import require_tool
from vpp.broker import free_port
from vpp.config import SiteConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
EXAMPLE = ROOT / "deploy" / "examples" / "bashang-county.toml"
DASHBOARD = ROOT / "deploy" / "grafana" / "vpp-operator.json"
SITE_IN_CONTAINER = "/etc/county-vpp/site.toml"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _bind_mounts(service: str) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (short syntax)."""
    out = {}
    for v in _services()[service].get("volumes", []):
        assert isinstance(v, str), f"{service}: use the short volume syntax: {v!r}"
        src, dst = v.split(":")[:2]
        if src.startswith((".", "/")):
            out[dst] = (COMPOSE_DIR / src).resolve()
    return out


def _host_path(service: str, container_path: str) -> Path:
    """Where a path inside a service's container comes from on the host."""
    p = PurePosixPath(container_path)
    for dst, src in sorted(_bind_mounts(service).items(), key=lambda kv: -len(kv[0])):
        if p == PurePosixPath(dst) or PurePosixPath(dst) in p.parents:
            return src / p.relative_to(dst)
    raise AssertionError(f"{service}: nothing is mounted at {container_path}")


def _site() -> SiteConfig:
    argv = _services()["controller"]["command"]
    return load_config(_host_path("controller", argv[argv.index("-c") + 1]))


def test_every_service_has_an_image_or_a_build() -> None:
    services = _services()
    assert set(services) == {"controller", "mosquitto", "postgres", "prometheus", "grafana"}
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        build = svc.get("build")
        if build is not None:
            context = (COMPOSE_DIR / build["context"]).resolve()
            assert (context / "pyproject.toml").exists(), context
            assert (context / build["dockerfile"]).is_file(), build
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown {dep}"


def test_every_mounted_host_path_is_in_the_repository() -> None:
    declared = set(_compose().get("volumes") or {})
    mounted = 0
    for name, svc in _services().items():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith((".", "/")):
                host = (COMPOSE_DIR / src).resolve()
                assert host.exists(), f"{name}: {src} does not exist"
                assert ROOT in host.parents, f"{name}: {src} is outside the repository"
                mounted += 1
            else:
                assert src in declared, f"{name}: volume {src} is not declared"
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert mounted >= 9


def test_the_site_file_is_the_example_with_the_compose_addresses() -> None:
    services = _services()
    site, example = _site(), load_config(EXAMPLE)
    assert site.mqtt.host == "mosquitto" and site.mqtt.host in services
    db = make_url(site.storage.url or "")
    assert db.host == "postgres" and db.host in services and db.password is None
    pg = services["postgres"]["environment"]
    assert (db.username, db.database) == (pg["POSTGRES_USER"], pg["POSTGRES_DB"])
    # the controller's PGPASSWORD is the database's password
    assert (services["controller"]["environment"]["PGPASSWORD"]
            == pg["POSTGRES_PASSWORD"])
    assert site.api.host == "0.0.0.0"  # reachable by Prometheus in the compose network
    assert site.storage.data_dir == "/var/lib/county-vpp"
    assert any(v == f"controller-data:{site.storage.data_dir}"
               for v in services["controller"]["volumes"])
    a, b = site.model_dump(mode="json"), example.model_dump(mode="json")
    for section, key in (("mqtt", "host"), ("storage", "url"), ("api", "host")):
        a[section][key] = b[section][key]
    assert a == b
    assert site.mqtt.password == example.mqtt.password


def test_prometheus_scrapes_the_controller_service() -> None:
    prom = _services()["prometheus"]
    flag = next(c for c in prom["command"] if c.startswith("--config.file="))
    cfg = yaml.safe_load(_host_path("prometheus", flag.split("=", 1)[1]).read_text())
    targets = [t for job in cfg["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]]
    assert targets == [f"controller:{_site().api.port}"]
    assert cfg["scrape_configs"][0]["metrics_path"] == "/metrics"


def test_the_compose_prometheus_config_differs_from_the_repos_only_in_its_target() -> None:
    mounted = yaml.safe_load(_host_path("prometheus", "/etc/prometheus/prometheus.yml")
                             .read_text())
    repo = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    for cfg in (mounted, repo):
        for job in cfg["scrape_configs"]:
            for sc in job["static_configs"]:
                sc.pop("targets")
                sc.pop("labels", None)
    assert mounted == repo


def test_promtool_accepts_the_prometheus_config_as_the_container_sees_it(
        promtool: str, tmp_path: Path) -> None:
    # rebuild the container's view: each bind mount as a symlink at its container path
    for dst, src in _bind_mounts("prometheus").items():
        link = tmp_path / dst.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(src)
    config = tmp_path / "etc" / "prometheus" / "prometheus.yml"
    res = subprocess.run([promtool, "check", "config", str(config)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 1 rule files found" in res.stdout + res.stderr
    assert "SUCCESS: 9 rules found" in res.stdout + res.stderr


def test_grafana_provisions_prometheus_and_the_operator_dashboard() -> None:
    services = _services()
    ds_dir = _host_path("grafana", "/etc/grafana/provisioning/datasources")
    (ds_file,) = sorted(ds_dir.glob("*.yml"))
    (ds,) = yaml.safe_load(ds_file.read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["isDefault"] is True
    assert ds["url"] == "http://prometheus:9090"
    assert "prometheus" in services
    assert not any(c.startswith("--web.listen-address") for c in
                   services["prometheus"]["command"])  # so it listens on 9090
    db_dir = _host_path("grafana", "/etc/grafana/provisioning/dashboards")
    (provider_file,) = sorted(db_dir.glob("*.yml"))
    (provider,) = yaml.safe_load(provider_file.read_text())["providers"]
    assert provider["type"] == "file"
    folder = provider["options"]["path"]
    dashboard = _host_path("grafana", f"{folder}/{DASHBOARD.name}")
    assert dashboard.samefile(DASHBOARD)
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert _host_path("grafana", home).samefile(DASHBOARD)
    # the dashboard asks for a datasource of the provisioned type
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    assert {"type": "datasource", "query": ds["type"]}.items() <= next(
        v for v in variables if v["type"] == "datasource").items()


# --- the container image ------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_containerfile_builds_what_compose_runs() -> None:
    controller = _services()["controller"]
    path = (COMPOSE_DIR / controller["build"]["context"] / controller["build"]["dockerfile"])
    ins = _instructions(path)
    froms = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    assert all(ins[i][1].split()[0] == "python:3.11-slim" for i in froms)
    final = ins[froms[-1]:]
    users = [r for w, r in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    env = " ".join(r for w, r in final if w == "ENV")
    health_url = re.search(r"VPP_HEALTH_URL=(\S+)", env)
    assert health_url and health_url.group(1).endswith(":8080/api/v1/health")
    (health,) = [r for w, r in final if w == "HEALTHCHECK"]
    assert "VPP_HEALTH_URL" in health
    assert [r for w, r in final if w == "EXPOSE"] == [str(_site().api.port)]
    (entry,) = [json.loads(r) for w, r in final if w == "ENTRYPOINT"]
    (cmd,) = [json.loads(r) for w, r in final if w == "CMD"]
    assert entry == ["vpp"] and cmd == ["run", "-c", SITE_IN_CONTAINER]
    assert controller["command"] == cmd
    assert any("pip install" in r for w, r in ins if w == "RUN")
    # everything copied from the context exists, and it is every package the project has
    context = (COMPOSE_DIR / controller["build"]["context"]).resolve()
    copied = [shlex.split(r)[:-1] for w, r in ins if w == "COPY" and "--from" not in r]
    sources = {s.rstrip("/") for c in copied for s in c}
    for s in sources:
        assert (context / s).exists(), s
    packages = tomllib.loads((context / "pyproject.toml").read_text())["tool"][
        "setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in packages} <= sources
    ignore = path.with_name(path.name + ".dockerignore").read_text().splitlines()
    assert "*" in ignore and {f"!{s}" for s in sources} <= {
        line.rstrip("/") for line in ignore}


# --- Mosquitto: the mounted configuration, run for real ------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    """Mosquitto on a free loopback port, from the mounted mosquitto.conf with each container
    path replaced by its host path (the data volume: a temporary folder)."""
    mosquitto = require_tool("mosquitto", "mosquitto")
    conf = "\n".join(line for line in _host_path(
        "mosquitto", "/mosquitto/config/mosquitto.conf").read_text().splitlines()
        if not line.startswith("#"))
    assert re.search(r"^listener 1883$", conf, re.M)
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()

    def host(m: re.Match[str]) -> str:
        p = m.group(0)
        if p.startswith("/mosquitto/data"):
            return f"{data}/"
        return str(_host_path("mosquitto", p))
    conf = re.sub(r"/mosquitto/\S+", host, conf)
    conf = re.sub(r"^listener 1883$", f"listener {port} 127.0.0.1", conf, flags=re.M)
    conf += "\nuser root\n"  # as root (CI), stay root: the data folder is root's
    (tmp_path / "mosquitto.conf").write_text(conf)
    log = (tmp_path / "mosquitto.log").open("w")
    proc = subprocess.Popen([mosquitto, "-c", str(tmp_path / "mosquitto.conf")],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, (tmp_path / "mosquitto.log").read_text()
            time.sleep(0.05)
        else:
            pytest.fail("Mosquitto did not listen: " + (tmp_path / "mosquitto.log").read_text())
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


async def test_mosquitto_runs_the_mounted_config_and_its_acl_holds(broker: int) -> None:
    site = _site()
    base = f"{site.mqtt.topic_prefix}/{site.site.id}"
    acl = _host_path("mosquitto", "/mosquitto/config/acl").read_text()
    assert f"topic readwrite {base}/#" in acl
    password = site.mqtt.password.get_secret_value() if site.mqtt.password else None

    def client(user: str, secret: str | None = None) -> aiomqtt.Client:
        return aiomqtt.Client("127.0.0.1", broker, username=user,
                              password=secret or f"change-me-{user.removeprefix('vpp-')}",
                              identifier=f"test-{user}")

    async with asyncio.timeout(20):
        # the controller, with the credentials of the compose site file
        async with client(site.mqtt.username or "", password) as ctrl, \
                client("vpp-viewer") as viewer:
            await ctrl.subscribe(f"{base}/#", qos=1)
            await viewer.subscribe(f"{base}/#", qos=1)

            async def seen(c: aiomqtt.Client, last: str) -> list[str]:
                got = []
                async for m in c.messages:
                    got.append(f"{m.topic} {m.payload.decode()}")  # type: ignore[union-attr]
                    if got[-1].endswith(last):
                        return got
                return got

            async with client("vpp-commander") as cmd:
                await cmd.publish(f"{base}/cmd/cap/ack", b"forged-ack", qos=1)
                await cmd.publish("vpp/other-county/cmd/cap", b"other-site", qos=1)
                await cmd.publish(f"{base}/cmd/cap", b"cap-from-commander", qos=1)
            assert await seen(ctrl, "cap-from-commander") == [
                f"{base}/cmd/cap cap-from-commander"]
            await viewer.publish(f"{base}/cmd/mode", b"mode-from-viewer", qos=1)
            await viewer.publish(f"{base}/status", b"status-from-viewer", qos=1)
            await ctrl.publish(f"{base}/status", b"online", qos=1)
            assert await seen(ctrl, "online") == [f"{base}/status online"]
            # the viewer reads all of the site
            assert await seen(viewer, "online") == [
                f"{base}/cmd/cap cap-from-commander", f"{base}/status online"]

        for user, secret in (("vpp-viewer", "wrong"), ("nobody", "change-me-nobody")):
            with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori[sz]ed|refused"):
                async with client(user, secret):
                    pass
