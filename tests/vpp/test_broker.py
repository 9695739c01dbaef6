"""Whether a configured port is taken: a listener is, a recent connection (TIME_WAIT) not."""

from __future__ import annotations

import socket

from vpp.broker import port_is_free


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
