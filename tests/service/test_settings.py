"""Settings: validated at start-up, every knob documented in docs/configuration.md."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from featureserve.models import available_models
from featureserve.service.settings import Settings

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_setting_is_documented_with_its_default() -> None:
    text = GUIDE.read_text()
    for name, field in Settings.model_fields.items():
        assert f"`FEATURESERVE_{name.upper()}`" in text, name
        assert field.description, name


def test_every_trained_model_is_loaded_by_default() -> None:
    # Untrained models exist only to exercise batching; a new trained model belongs in the default list.
    assert set(Settings().models) == set(available_models()) - {"tiny-cnn"}


def test_environment_overrides_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURESERVE_MODELS", '["orb"]')
    monkeypatch.setenv("FEATURESERVE_DEFAULT_MODEL", "orb")
    monkeypatch.setenv("FEATURESERVE_MAX_BATCH", "4")
    settings = Settings()
    assert settings.models == ["orb"] and settings.max_batch == 4
    with pytest.raises(ValidationError, match="default_model"):
        Settings(models=["orb"], default_model="sift")
    with pytest.raises(ValidationError, match="unknown models"):
        Settings(models=["orb", "sirf"], default_model="orb")
    with pytest.raises(ValidationError):
        Settings(max_batch=0)


def test_model_conf_is_checked_against_each_models_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURESERVE_MODEL_CONF", '{"caps": {"upright": false}}')
    assert Settings().model_conf == {"caps": {"upright": False}}
    with pytest.raises(ValidationError, match=r"unknown options for sift: \['upright'\]; known: \["):
        Settings(model_conf={"sift": {"upright": False}})
    with pytest.raises(ValidationError, match="model_conf names unknown model 'sirf'"):
        Settings(model_conf={"sirf": {}})
