"""Settings are checked as they are read: an unusable value (a wrong device or dtype, no searches
allowed at once) stops the start naming its variable, and a CHEXTRIEV_* variable that nothing reads
(a misspelling) is named in a warning."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from service.cli import main
from service.settings import Settings, SettingsError, get_settings, read_settings, unknown_variables


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No CHEXTRIEV_* variable from the outside, and no settings cached across tests."""
    for name in [name for name in os.environ if name.startswith("CHEXTRIEV_")]:
        monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("CHEXTRIEV_DEVICE", "gpu", "unknown device 'gpu'"),
    ("CHEXTRIEV_DEVICE", "cuda:x", "unknown device 'cuda:x'"),
    ("CHEXTRIEV_DTYPE", "fp64", "unknown dtype 'fp64'"),
    ("CHEXTRIEV_MAX_CONCURRENT_SEARCHES", "0", "greater than 0"),
    ("CHEXTRIEV_MAX_QUEUED_SEARCHES", "-1", "greater than or equal to 0"),
    ("CHEXTRIEV_SALIENCY_SCALE_MAX", "0.01", "must be above the noise floor"),
    ("CHEXTRIEV_SALIENCY_NOISE_FLOOR", "-0.1", "greater than or equal to 0"),
    ("CHEXTRIEV_STUDY_URL_TEMPLATE", "http://viewer/{patient_id}", "only the placeholders"),
    ("CHEXTRIEV_DICOMWEB_TIMEOUT_S", "0", "greater than 0"),
    ("CHEXTRIEV_DICOMWEB_URL", "pacs:8042", "DICOMweb root"),
])
def test_an_unusable_value_stops_the_start_naming_the_variable(monkeypatch, capsys, variable, value, expected):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=f"{variable}: .*{expected}"):
        read_settings()
    assert main(["serve", "--port", "1"]) == 2  # refused before anything listens
    assert f"{variable}: " in capsys.readouterr().err


@pytest.mark.parametrize("variables", [
    {"CHEXTRIEV_DICOMWEB_PASSWORD_FILE": "/run/secrets/p", "CHEXTRIEV_DICOMWEB_TOKEN_FILE": "/run/secrets/t",
     "CHEXTRIEV_DICOMWEB_USERNAME": "u"},
    {"CHEXTRIEV_DICOMWEB_USERNAME": "u"},
    {"CHEXTRIEV_DICOMWEB_PASSWORD_FILE": "/run/secrets/p"},
])
def test_archive_credentials_are_one_whole_kind(monkeypatch, variables):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match="DICOMweb"):
        read_settings()


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_every_documented_device_name_is_accepted(monkeypatch, device):
    monkeypatch.setenv("CHEXTRIEV_DEVICE", device)
    monkeypatch.setenv("CHEXTRIEV_DTYPE", "bfloat16")
    settings = read_settings()
    assert (settings.device, settings.dtype) == (device, "bfloat16")


def test_concurrent_searches_default_to_the_cpu_count(monkeypatch):
    assert read_settings().max_concurrent_searches == (os.cpu_count() or 1)
    monkeypatch.setenv("CHEXTRIEV_MAX_CONCURRENT_SEARCHES", "3")
    assert read_settings().max_concurrent_searches == 3


def test_other_bad_values_name_their_variables_all_at_once(monkeypatch):
    monkeypatch.setenv("CHEXTRIEV_PORT", "eighty")
    monkeypatch.setenv("CHEXTRIEV_DTYPE", "double")
    with pytest.raises(SettingsError) as error:
        read_settings()
    assert "CHEXTRIEV_PORT" in str(error.value) and "CHEXTRIEV_DTYPE" in str(error.value)


def test_a_misspelt_variable_is_named_in_a_warning(monkeypatch, caplog):
    monkeypatch.setenv("CHEXTRIEV_ADMIN_TOKN", "secret-token-value")
    monkeypatch.setenv("CHEXTRIEV_SHARED_DATA", "/data")  # read by the tests, not a mistake
    with caplog.at_level(logging.WARNING, logger="service.settings"):
        settings = read_settings()
    assert settings.admin_token is None  # the misspelt token enables nothing...
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert [record.variable for record in warnings] == ["CHEXTRIEV_ADMIN_TOKN"]  # ...and says so
    assert "secret-token-value" not in caplog.text


def test_every_setting_field_is_a_known_variable():
    environ = {f"CHEXTRIEV_{field.upper()}": "x" for field in Settings.model_fields}
    assert unknown_variables(environ) == []
    assert unknown_variables({"CHEXTRIEV_DEVICES": "cpu", "OTHER": "1"}) == ["CHEXTRIEV_DEVICES"]
