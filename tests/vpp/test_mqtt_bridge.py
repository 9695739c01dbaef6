"""The MQTT bridge's outbox, buffer bound and settings, without a broker (the broker side is
in test_mqtt_mosquitto.py)."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest
from pydantic import ValidationError

from vpp.config import MqttSection
from vpp.mqtt import MqttBridge, Outbox


def bridge(tmp_path: Path, **kw: object) -> MqttBridge:
    return MqttBridge(host="127.0.0.1", port=1, site="s1",  # port 1: nothing listens
                      outbox_path=tmp_path / "outbox.sqlite", **kw)  # type: ignore[arg-type]


def rows(path: Path) -> list[tuple[int, str, int]]:
    with sqlite3.connect(path) as db:
        return [(seq, topic, json.loads(payload)["i"]) for seq, topic, payload in
                db.execute("SELECT seq, topic, payload FROM outbox ORDER BY seq")]


def names(b: MqttBridge) -> list[str]:
    return [m.topic.removeprefix("vpp/s1/") for m in b._buffer]


def test_qos1_messages_go_to_the_file_in_order_and_qos0_ones_do_not(tmp_path: Path) -> None:
    b = bridge(tmp_path)
    b.publish("schedule", {"i": 0}, qos=1, retain=True)
    b.publish("pcc", {"i": 1})
    b.publish("forecast/pv1/short", {"i": 2}, qos=1, retain=True)
    b.close()
    got = rows(tmp_path / "outbox.sqlite")
    assert [(t, i) for _, t, i in got] == [("vpp/s1/schedule", 0), ("vpp/s1/forecast/pv1/short", 2)]
    assert got[0][0] < got[1][0]  # sequence numbers
    with sqlite3.connect(tmp_path / "outbox.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_new_bridge_sends_the_files_messages_first_in_order(tmp_path: Path) -> None:
    first = bridge(tmp_path)
    for i in range(5):
        first.publish(f"q1/{i}", {"i": i}, qos=1, retain=i % 2 == 0)
        first.publish(f"q0/{i}", {"i": i})  # lost with the process: memory only
    first.close()
    again = bridge(tmp_path)
    again.publish("new", {"i": 9}, qos=1)
    assert names(again) == ["q1/0", "q1/1", "q1/2", "q1/3", "q1/4", "new"]
    assert [m.retain for m in again._buffer][:5] == [True, False, True, False, True]
    assert all(m.qos == 1 and m.seq is not None for m in again._buffer)
    assert json.loads(again._buffer[3].payload) == {"schema": 1, "i": 3}
    again.close()


def test_a_dropped_qos1_message_leaves_the_file_too(tmp_path: Path) -> None:
    b = bridge(tmp_path, max_buffer=3)
    for i in range(3):
        b.publish(f"q1/{i}", {"i": i}, qos=1)
    b.publish("q0", {"i": 3})  # full of QoS 1: the oldest goes
    b.publish("q1/4", {"i": 4}, qos=1)  # the QoS 0 one goes first
    assert names(b) == ["q1/1", "q1/2", "q1/4"] and b.dropped == 2
    b.close()
    assert [i for _, _, i in rows(tmp_path / "outbox.sqlite")] == [1, 2, 4]


def test_a_file_longer_than_the_bound_keeps_its_newest(tmp_path: Path) -> None:
    b = bridge(tmp_path)
    for i in range(10):
        b.publish(f"q1/{i}", {"i": i}, qos=1)
    b.close()
    small = bridge(tmp_path, max_buffer=4)
    assert names(small) == ["q1/6", "q1/7", "q1/8", "q1/9"] and small.dropped == 6
    small.close()
    assert [i for _, _, i in rows(tmp_path / "outbox.sqlite")] == [6, 7, 8, 9]


def test_a_failing_outbox_keeps_publishing_in_memory_and_says_so_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    b = bridge(tmp_path)
    assert b._outbox is not None
    b._outbox._db.close()  # every write now raises sqlite3.ProgrammingError
    with caplog.at_level(logging.ERROR, logger="vpp.mqtt"):
        for i in range(3):
            b.publish(f"q1/{i}", {"i": i}, qos=1)
    assert b.buffered == 3 and b.outbox_errors == 3
    assert [m.seq for m in b._buffer] == [None, None, None]
    assert len([r for r in caplog.records if "memory only" in r.getMessage()]) == 1
    b._outbox = None  # its connection is closed already


def test_without_an_outbox_qos1_is_memory_only() -> None:
    b = MqttBridge(host="127.0.0.1", port=1, site="s1")
    b.publish("schedule", {}, qos=1)
    assert b.buffered == 1 and b._buffer[0].seq is None and b._outbox is None
    b.close()


def test_outbox_checkpoint_folds_the_wal(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    for i in range(100):
        box.add(f"t/{i}", b"{}", 1, False)
    assert (tmp_path / "o.sqlite-wal").stat().st_size > 0
    box.checkpoint()  # another connection, as from the worker thread
    with sqlite3.connect(f"file:{tmp_path / 'o.sqlite'}?mode=ro", uri=True) as db:
        assert db.execute("SELECT count(*) FROM outbox").fetchone() == (100,)
    assert [m.topic for m in box.load()][:2] == ["t/0", "t/1"]
    box.close()


def test_the_password_is_not_in_the_repr() -> None:
    b = MqttBridge(host="h", port=1, site="s1", username="vpp", password="s3cret-pw")
    assert "s3cret-pw" not in repr(b) and "password" not in vars(b)


def test_a_missing_tls_file_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        MqttBridge(host="h", port=1, site="s1", tls=True, tls_ca_file=str(tmp_path / "nope.pem"))


@pytest.mark.parametrize(("settings", "expected"), [
    ({"tls_ca_file": "/etc/ca.pem"}, "tls_ca_file given but tls is false"),
    ({"tls_insecure": True}, "tls_insecure given but tls is false"),
    ({"tls": True, "tls_key_file": "/k.pem"}, "tls_key_file needs tls_cert_file"),
    ({"client_id": "vpp s1"}, "client_id"),
])
def test_mqtt_settings_are_checked(settings: dict[str, object], expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        MqttSection(**settings)  # type: ignore[arg-type]


def test_mqtt_tls_settings_parse() -> None:
    s = MqttSection(tls=True, tls_ca_file="/etc/vpp/ca.pem", tls_cert_file="/etc/vpp/c.pem",
                    tls_key_file="/etc/vpp/c.key", client_id="vpp-s1")
    assert s.tls_ca_file == "/etc/vpp/ca.pem" and not s.tls_insecure
