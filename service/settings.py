"""Service settings, read from `CHEXTRIEV_*` environment variables."""

from __future__ import annotations

from functools import lru_cache

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.preprocessing import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS


class Settings(BaseSettings):
    """Every setting of the service; `CHEXTRIEV_<FIELD>` in the environment overrides a default."""

    model_config = SettingsConfigDict(env_prefix="CHEXTRIEV_", extra="ignore")

    database_url: str = "sqlite:///./var/chextriev.db"
    index_store: str = "./var/index"
    checkpoint: str = "./var/checkpoint"
    image_root: str = "./var/images"
    device: str = "cpu"
    dtype: str = "float32"
    admin_token: SecretStr | None = None
    query_ttl_seconds: int = 900
    query_cache_size: int = 256
    max_upload_bytes: int = MAX_IMAGE_BYTES
    max_image_pixels: int = MAX_IMAGE_PIXELS
    patient_salt: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    active_version: str | None = None
    thumbnail_max_side: int = 256


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read from the environment once."""
    return Settings()
