"""Ports: whether a configured port is taken (a listener is, a recent connection in
TIME_WAIT not); free ports for servers drawn outside the OS's ephemeral range; and
`vpp run` refusing to start on a taken port instead of moving elsewhere."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

from tests.e2e.test_two_processes import _site
from vpp.broker import EPHEMERAL_RANGE_FILE, free_ports, port_is_free


def test_a_listening_port_is_taken_and_one_left_in_time_wait_is_free() -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    assert not port_is_free("127.0.0.1", port)
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    conn.close()  # the server closes first: its side waits in TIME_WAIT
    client.close()
    srv.close()
    # a restarted server binds it again (with SO_REUSEADDR), so it must not move elsewhere
    assert port_is_free("127.0.0.1", port)


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    low = int(EPHEMERAL_RANGE_FILE.read_text(encoding="ascii").split()[0])
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(1024 <= p < low for p in ports), ports
    socks = []
    try:
        for p in ports:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", p))
            s.listen()
            socks.append(s)
        # a port in use is never offered
        assert not set(free_ports(200)) & set(ports)
    finally:
        for s in socks:
            s.close()


def test_vpp_run_on_a_taken_api_port_stops_naming_it(tmp_path: Path) -> None:
    """A controller that moved its API elsewhere would not be found by its scrapes, its
    console users or its service manager: `vpp run` stops, saying which port is taken."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        site = _site(tmp_path)
        text = re.sub(r"(\[api\]\nhost = \"127.0.0.1\"\n)port = 0", rf"\1port = {port}",
                      site.read_text(encoding="utf-8"))
        site.write_text(text, encoding="utf-8")
        res = subprocess.run([sys.executable, "-m", "vpp.cli", "run", "--config", str(site)],
                             capture_output=True, text=True, timeout=120, check=False,
                             cwd=tmp_path)
    finally:
        holder.close()
    assert res.returncode == 1, (res.stdout[-2000:], res.stderr[-2000:])
    assert f"api.port = {port}: 127.0.0.1:{port} is in use" in res.stderr
    assert "Traceback" not in res.stderr
    assert "running" not in res.stdout
