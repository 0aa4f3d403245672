"""The configuration store shared by the admin API and CLI: validated, atomic, comment-keeping edits."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from config import load_settings
from config.settings import parse_settings
from dicom_node.admin.config_store import ConfigStore
from dicom_node.admin.errors import EntityConflict, EntityNotFound, InvalidEntity

EXAMPLE = Path(__file__).resolve().parents[3] / "config" / "node.example.yaml"
PACS2 = {"name": "pacs2", "ae_title": "PACS2", "host": "127.0.0.1", "port": 4243}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(EXAMPLE.read_text())
    return path


def test_changes_are_persisted_loadable_and_keep_comments(config_file: Path) -> None:
    store = ConfigStore(config_file, environ={})
    store.create("sources", {"ae_title": "CT01", "host": "10.0.0.9"})
    store.create("destinations", PACS2)
    store.create(
        "routes",
        {
            "name": "ct",
            "match": {"Modality": "CT"},
            "instruction": "Segment both lungs",
            "destinations": ["pacs2"],
        },
        position=0,
    )
    store.update_identity({"ae_title": "NODE2", "port": 11113})
    reloaded = load_settings(config_file, environ={})
    assert [s.ae_title for s in reloaded.sources] == ["PACS", "STORESCU", "CT01"]
    assert reloaded.sources[2].host == "10.0.0.9"
    assert reloaded.destination("pacs2").port == 4243
    assert [r.name for r in reloaded.routes] == ["ct", "chest-ct"]
    assert (reloaded.node.ae_title, reloaded.node.port) == ("NODE2", 11113)
    text = config_file.read_text()
    assert "# the node's own AE title (max 16 characters)" in text
    assert "expected_series: null" in text  # written as the admin wrote it, not as an empty value
    assert store.settings == reloaded


def test_duplicates_conflict_and_bad_values_name_the_field(config_file: Path) -> None:
    store = ConfigStore(config_file, environ={})
    before = config_file.read_bytes()
    with pytest.raises(EntityConflict, match="destination 'pacs' exists already"):
        store.create("destinations", {**PACS2, "name": "pacs"})
    with pytest.raises(EntityConflict, match="source 'PACS' exists already"):
        store.create("sources", {"ae_title": "PACS"})
    cases = [
        ("destinations", {**PACS2, "port": 70000}, "port"),
        ("destinations", {**PACS2, "ae_title": "A" * 17}, "ae_title"),
        ("destinations", {**PACS2, "colour": "red"}, "colour"),
        ("sources", {"ae_title": "BACK\\SLASH"}, "ae_title"),
        ("routes", {"name": "r", "instruction": "x", "match": {"NoSuchKeyword": "CT"}}, "match"),
        ("routes", {"name": "r", "instruction": "x", "destinations": ["nowhere"]}, "destinations"),
        (
            "routes",
            {"name": "r", "instruction": "x", "completion": {"quiet_seconds": -1}},
            "completion.quiet_seconds",
        ),
    ]
    for section, data, field in cases:
        with pytest.raises(InvalidEntity) as raised:
            store.create(section, data)
        assert raised.value.errors[0][0] == field, (data, raised.value.errors)
    with pytest.raises(InvalidEntity) as raised:
        store.update_identity({"ae_title": "NODE", "port": 0, "bind": "not a host!"})
    assert {field for field, _ in raised.value.errors} == {"port", "bind"}
    assert config_file.read_bytes() == before


def test_replace_keeps_the_place_and_refuses_renames_that_break_keys(config_file: Path) -> None:
    store = ConfigStore(config_file, environ={})
    store.create("destinations", PACS2)
    store.replace("destinations", "pacs2", {**PACS2, "port": 4300})
    assert [d.name for d in store.entries("destinations")] == ["pacs", "pacs2"]
    assert store.entry("destinations", "pacs2").port == 4300
    with pytest.raises(InvalidEntity) as raised:
        store.replace("destinations", "pacs2", {**PACS2, "name": "other"})
    assert raised.value.errors[0][0] == "name"
    with pytest.raises(EntityNotFound):
        store.replace("routes", "nope", {"name": "nope", "instruction": "x"})
    store.replace("sources", "STORESCU", {"ae_title": "STORESCU", "host": "127.0.0.1"})
    assert [s.ae_title for s in store.entries("sources")] == ["PACS", "STORESCU"]
    with pytest.raises(EntityConflict):
        store.replace("sources", "STORESCU@127.0.0.1", {"ae_title": "PACS"})
    store.entry("sources", "STORESCU@127.0.0.1")


def test_a_destination_a_route_sends_to_cannot_be_deleted(config_file: Path) -> None:
    store = ConfigStore(config_file, environ={})
    with pytest.raises(EntityConflict, match="used by route"):
        store.delete("destinations", "pacs")
    store.delete("routes", "chest-ct")
    store.delete("destinations", "pacs")
    assert load_settings(config_file, environ={}).destinations == []
    with pytest.raises(EntityNotFound):
        store.delete("destinations", "pacs")


def test_apply_runs_before_the_file_changes_and_a_refusal_leaves_it_as_it_was(config_file: Path) -> None:
    applied = []

    def refuse_port_11114(settings) -> None:
        if settings.node.port == 11114:
            raise OSError(98, "Address already in use")
        applied.append(settings)

    store = ConfigStore(config_file, apply=refuse_port_11114, environ={})
    before = config_file.read_bytes()
    with pytest.raises(OSError):
        store.update_identity({"ae_title": "MEDAGENT", "port": 11114})
    assert config_file.read_bytes() == before and store.settings.node.port == 11112
    assert not list(config_file.parent.glob(".*.part"))
    store.create("sources", {"ae_title": "CT01"})
    assert applied and applied[-1].sources[-1].ae_title == "CT01"


def test_two_writers_lose_no_change(config_file: Path) -> None:
    """Two stores on one file (the API and a CLI process): each sees what the other wrote."""
    first, second = ConfigStore(config_file, environ={}), ConfigStore(config_file, environ={})
    errors = []

    def add(store: ConfigStore, prefix: str) -> None:
        try:
            for number in range(8):
                store.create("sources", {"ae_title": f"{prefix}{number}"})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=add, args=(first, "A")),
        threading.Thread(target=add, args=(second, "B")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    titles = {s.ae_title for s in load_settings(config_file, environ={}).sources}
    assert {f"A{n}" for n in range(8)} | {f"B{n}" for n in range(8)} <= titles


def test_reload_applies_a_valid_edit_and_ignores_an_invalid_one(config_file: Path) -> None:
    applied = []
    store = ConfigStore(config_file, apply=applied.append, environ={})
    assert store.reload_if_changed() is False
    other = ConfigStore(config_file, environ={})
    other.create("sources", {"ae_title": "CT01"})
    assert store.reload_if_changed() is True
    assert applied[-1].sources[-1].ae_title == "CT01" and store.settings.sources[-1].ae_title == "CT01"
    config_file.write_text(config_file.read_text().replace("port: 4242", "port: 424242"))
    assert store.reload_if_changed() is False
    assert len(applied) == 1 and store.settings.destination("pacs").port == 4242


def test_a_store_without_a_file_changes_settings_in_memory() -> None:
    settings = parse_settings({"admin": {"token": "0123456789abcdef"}}, environ={})
    applied = []
    store = ConfigStore(None, settings=settings, apply=applied.append, environ={})
    store.create("sources", {"ae_title": "CT01"})
    assert [s.ae_title for s in store.settings.sources] == ["CT01"]
    assert store.settings.admin.token.get_secret_value() == "0123456789abcdef"
    assert applied[-1] is store.settings
