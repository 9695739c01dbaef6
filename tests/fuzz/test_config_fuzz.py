"""The site configuration under mutated documents.

Documents are the demo county's (with a secret MQTT password and a database URL with a
password in it) with a few mutations: a value replaced by one of another type, NaN, an
infinity, a negative or huge number, a date, a table or an array; a key or a whole section
removed; an unknown key added. Loading never raises anything but :class:`ConfigError`,
every problem starts with the field it is about, a configuration that loads holds only
finite numbers, and no problem, nor the repr of what loaded, shows a secret.
"""

from __future__ import annotations

import copy
import json
import math
import re
import tomllib
from datetime import UTC, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, note
from hypothesis import strategies as st
from pydantic import BaseModel

from tests.conftest import DEMO_CONFIG
from tests.fuzz import FUZZ
from vpp import config as c
from vpp.config import ConfigError, SiteConfig, load_config, parse_config

MQTT_SECRET = "mq-S3cret-9f2c"
DB_SECRET = "db-S3cret-77aa"


def base_document() -> dict[str, Any]:
    doc = tomllib.loads(DEMO_CONFIG.read_text(encoding="utf-8"))
    doc["mqtt"].update(username="vpp", password=MQTT_SECRET)
    doc["storage"]["url"] = f"postgresql+psycopg://vpp:{DB_SECRET}@db.example:5432/vpp"
    return doc


BASE = base_document()
MODELS: list[type[BaseModel]] = [
    c.SiteConfig, c.SiteSection, c.PccSection, c.PvAsset, c.WindAsset, c.BatteryAsset,
    c.LoadAsset, c.MeterAsset, c.FlexibleLoad, c.ForecastingSection, c.GroupSection,
    c.DispatchSection, c.ControlSection, c.PollingSection, c.MqttSection, c.StorageSection,
    c.ApiSection, c.MetricsSection, c.SimSection]
FIELDS = {f for m in MODELS for f in m.model_fields}
SECTIONS = {"site", "pcc", "assets", "forecasting", "dispatch", "control", "polling", "mqtt",
            "storage", "api", "metrics", "sim", "flexible", "groups"}
LEAVES = FIELDS - SECTIONS
STRUCTURAL = ("required key is missing", "unknown key", "is not a kind", "Input should be a "
              "valid", "should have at least")

# values a TOML file can hold, and the ones a site file gets wrong most
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1e308, -0.0, math.nan, math.inf, -math.inf, 2**63 - 1]),
    st.booleans(), text,
    st.datetimes(timezones=st.sampled_from([None, UTC, timezone(timedelta(hours=8))])),
    st.dates(), st.times())
keys = st.one_of(st.sampled_from(sorted(FIELDS)), text)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(keys, inner, max_size=3), max_leaves=6)


def paths(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in the document: keys of tables, items of arrays (containers too)."""
    out = [at] if at else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*at, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, (*at, i))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path[:-1]:
        doc = doc[p]
    return doc


STRINGS = ["", "America", "Etc/GMT+99", "x" * 300, "x" * 300 + ".yaml", "../x.yaml",
           "/dev/null", "\x00", "sunspec", "generic-pv", "generic-battery", "generic-meter",
           "pcc", "pv1", "mysql://u:p@h/db", "postgresql://u:p@h:notaport/db", "::", "[/]",
           "{field}", "2026-04-15T00:00:00", "24:00", "HIGHS"]


def near(old: Any) -> st.SearchStrategy[Any]:
    """Values a person editing ``old`` gets wrong: its type at the edges, or the type next
    to it."""
    if isinstance(old, bool):
        return st.sampled_from([0, 1, 2, "true", "yes", 0.5])
    if isinstance(old, int | float):
        return st.sampled_from([math.nan, math.inf, -math.inf, -old, 0, -1, 0.5, 1e308, -1e308,
                                old * 10**12, 10**30, -(10**30), 2**63 - 1, str(old), [old],
                                True])
    if isinstance(old, str):
        return st.one_of(st.sampled_from([*STRINGS, old + "x", old.upper(), old * 50, 5, [old]]),
                         text)
    if isinstance(old, list):
        return st.sampled_from([[], old[::-1], old * 2, [*old, old[0] if old else 0], {}, "x"])
    return st.sampled_from([{}, [], "x", 0])


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 2, 3]))):
        where = draw(st.sampled_from(paths(doc)))
        parent = _parent(doc, where)
        action = draw(st.sampled_from(["set", "set", "set", "delete", "add"]))
        if action == "set":
            old = parent[where[-1]]
            parent[where[-1]] = draw(st.one_of(near(old), near(old), values))
        elif action == "delete":
            del parent[where[-1]]
        else:
            node = parent[where[-1]]
            if isinstance(node, dict):
                node[draw(keys)] = draw(values)
            elif isinstance(node, list):
                node.append(draw(values))
    return doc


def check(doc: Any, load: Any) -> None:
    """``load()`` gives a SiteConfig holding numbers only, or a ConfigError whose every
    problem names a field; no secret shows in either."""
    try:
        cfg = load()
    except ConfigError as exc:
        report_problems(doc, exc)
        return
    assert isinstance(cfg, SiteConfig)
    assert all_finite(cfg.model_dump()), "a NaN or an infinity was accepted"
    shown = repr(cfg) + str(cfg)
    assert MQTT_SECRET not in shown and DB_SECRET not in shown


def report_problems(doc: Any, exc: ConfigError) -> None:
    """Each problem of ``exc`` starts with its field, and no secret is in any."""
    shown = str(exc)
    assert MQTT_SECRET not in shown and DB_SECRET not in shown, shown
    assert len(exc.fields) == len(exc.problems) > 0
    unknown = {k for p in paths(doc) if isinstance(k := p[-1], str)} - FIELDS
    for field, problem in zip(exc.fields, exc.problems, strict=True):
        assert field and not field.startswith("(") and problem.startswith(field), problem
        quoted = re.search(r'\[("(?:[^"\\]|\\.)*")\]$', field)  # site["a.b"]
        last = (json.loads(quoted.group(1)) if quoted
                else field.rsplit(".", 1)[-1].split("[", 1)[0])
        structural = any(s in problem for s in STRUCTURAL)
        assert last in LEAVES or last in unknown or (last in SECTIONS and structural), (
            f"{problem!r} does not name a field")


def all_finite(node: Any) -> bool:
    if isinstance(node, dict):
        return all(all_finite(v) for v in node.values())
    if isinstance(node, list | tuple):
        return all(all_finite(v) for v in node)
    return not isinstance(node, float) or math.isfinite(node)


@FUZZ
@given(doc=documents())
def test_a_mutated_document_loads_or_names_each_bad_field(doc: dict[str, Any]) -> None:
    note(repr(doc))
    check(doc, lambda: parse_config(copy.deepcopy(doc), "fuzz.toml"))


# -- as a TOML file ------------------------------------------------------------------------

def toml_value(v: Any) -> str:
    """``v`` as a TOML value: tables inline, strings with their control characters escaped."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_value(str(k))} = {toml_value(x)}"
                               for k, x in v.items()) + "}"
    return v.isoformat()  # datetime, date, time


def toml_document(doc: dict[str, Any]) -> str:
    return "".join(f"{toml_value(str(k))} = {toml_value(v)}\n" for k, v in doc.items())


def test_the_toml_writer_round_trips_the_demo() -> None:
    assert tomllib.loads(toml_document(BASE)) == BASE


@pytest.fixture(scope="module")
def site_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "site.toml"


@FUZZ
@given(doc=documents())
def test_a_mutated_site_file_loads_or_names_each_bad_field(site_file: Path,
                                                            doc: dict[str, Any]) -> None:
    site_file.write_text(toml_document(doc), encoding="utf-8")
    check(doc, lambda: load_config(site_file))


@FUZZ
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_load_or_raise_config_error(site_file: Path, data: bytes) -> None:
    site_file.write_bytes(data)
    problems: list[str] = ["(loaded)"]
    try:
        load_config(site_file)
    except ConfigError as exc:
        problems = exc.problems
    assert problems


# -- what the fuzzers found, kept as plain tests -------------------------------------------

def _problems(mutate: Any) -> list[str]:
    doc = copy.deepcopy(BASE)
    mutate(doc)
    with pytest.raises(ConfigError) as exc:
        parse_config(doc)
    return exc.value.problems


def test_a_timezone_naming_a_folder_is_a_problem_not_a_crash() -> None:
    # found: timezone = "America" raised IsADirectoryError out of load_config
    assert _problems(lambda d: d["site"].update(timezone="America")) == [
        "site.timezone: 'America' is not allowed: unknown IANA timezone (e.g. 'Asia/Shanghai')"]


def test_a_profile_name_too_long_for_a_file_is_a_problem_not_a_crash() -> None:
    # found probing beside the fuzzer: a 300-character profile name raised OSError (file
    # name too long) out of load_config
    problems = _problems(lambda d: d["assets"][0].update(profile="x" * 300 + ".yaml"))
    assert problems[0].startswith("assets[0] (pv1).profile: ")
    assert "unknown profile" in problems[0]


def test_an_infinite_cap_is_refused() -> None:
    # found: export_cap_w = inf (TOML's inf) loaded; so did inf in every field with only
    # a lower bound
    assert _problems(lambda d: d["pcc"].update(export_cap_w=math.inf)) == [
        "pcc.export_cap_w: inf is not allowed: Input should be a finite number"]


def test_a_load_without_peak_names_the_field() -> None:
    # found: "assets[3] (load): '…' is not allowed: load load: give peak_w …" named no field
    (problem,) = _problems(lambda d: d["assets"][3].pop("peak_w"))
    assert problem.startswith("assets[3] (load).peak_w: give peak_w")


def test_the_database_password_is_masked_in_the_repr_and_in_problems() -> None:
    # found: repr(config) showed storage.url with its password
    doc = copy.deepcopy(BASE)
    cfg = parse_config(doc)
    assert DB_SECRET not in repr(cfg) and "vpp:***@db.example" in repr(cfg.storage)
    problems = _problems(lambda d: d["storage"].update(url=f"mysql://vpp:{DB_SECRET}@h/db"))
    assert problems == ["storage.url: 'mysql://vpp:***@h/db' is not allowed: backend 'mysql' "
                        "is not supported; use sqlite or postgresql"]


def test_an_unknown_key_does_not_show_its_value() -> None:
    # found reading the fuzzer's problems: a misspelt key showed its value (a password)
    assert _problems(lambda d: d["mqtt"].update(pasword="hunter2")) == [
        "mqtt.pasword: unknown key; see docs/config.md for the keys allowed"]


def test_an_id_that_is_no_id_is_not_put_into_the_path() -> None:
    # found reading the fuzzer's problems: an id with a newline split a problem in two
    (problem,) = _problems(lambda d: d["assets"][0].update(id="a\nb:c"))
    assert problem.startswith("assets[0].id: 'a\\nb:c' is not allowed")
    assert "\n" not in problem
