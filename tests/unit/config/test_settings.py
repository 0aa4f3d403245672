from pathlib import Path

import pytest

from config import ConfigError, load_settings
from config.settings import QueueMode, parse_settings

EXAMPLE = Path(__file__).resolve().parents[3] / "config" / "node.example.yaml"


def test_example_file_is_valid_and_has_the_documented_keys() -> None:
    settings = load_settings(EXAMPLE, environ={})
    assert settings.node.ae_title == "MEDAGENT"
    assert settings.node.port == 11112
    assert settings.node.bind == "127.0.0.1"
    assert settings.node.storage.is_absolute()
    assert [s.ae_title for s in settings.sources][0] == "PACS"
    assert settings.destination("pacs").port == 4242
    route = settings.routes[0]
    assert (route.name, route.match, route.destinations) == ("chest-ct", {"Modality": "CT"}, ["pacs"])
    assert route.completion.quiet_seconds == 5
    assert settings.queue.mode is QueueMode.EMBEDDED


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"node": {"ae_title": "A" * 17}},
            "node.ae_title: 'AAAAAAAAAAAAAAAAA' must not exceed 16 characters",
        ),
        ({"node": {"port": 0}}, "node.port:"),
        (
            {"node": {"listener_processes": 0}},
            "node.listener_processes: Input should be greater than or equal to 1",
        ),
        ({"node": {"colour": "red"}}, "node.colour: unknown key"),
        ({"sources": [{"ae_title": ""}]}, "sources[0].ae_title: must not be empty"),
        (
            {"destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1"}]},
            "destinations[0].port: Field required",
        ),
        (
            {"routes": [{"name": "r", "match": {"Modalty": "CT"}, "instruction": "x"}]},
            "routes[0].match: 'Modalty' is not a DICOM keyword",
        ),
        (
            {"routes": [{"name": "r", "match": {"Modality": "C(T"}, "instruction": "x"}]},
            "is not a valid regex",
        ),
        (
            {"routes": [{"name": "r", "instruction": "x", "destinations": ["nowhere"]}]},
            "routes[0].destinations: 'nowhere' is not a configured destination",
        ),
        ({"queue": {"mode": "redis"}}, "queue: Value error, broker_url 'None' must be a redis:// URL"),
        ({"queue": {"mode": "rabbit"}}, "queue.mode:"),
        ({"models": {"device": "tpu"}}, "models.device: 'tpu' must be auto, cpu, cuda, cuda:N or mps"),
    ],
)
def test_errors_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_settings(data, environ={})
    assert message.replace("Value error, ", "") in str(raised.value).replace("Value error, ", "")


def test_unreadable_and_malformed_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("node: {ae_title: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(listing)


def test_environment_overrides_scalar_keys(tmp_path: Path) -> None:
    settings = load_settings(
        EXAMPLE, environ={"MEDAGENT__NODE__PORT": "11999", "MEDAGENT__NODE__STORAGE": str(tmp_path)}
    )
    assert settings.node.port == 11999
    assert settings.node.storage == tmp_path
    with pytest.raises(ConfigError, match="node.port"):
        load_settings(EXAMPLE, environ={"MEDAGENT__NODE__PORT": "not-a-port"})


def test_duplicate_names_are_rejected() -> None:
    destination = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}
    with pytest.raises(ConfigError, match="name 'pacs' is used more than once"):
        parse_settings({"destinations": [destination, destination]}, environ={})
