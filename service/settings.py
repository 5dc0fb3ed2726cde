"""Service settings, read once from `CHEXTRIEV_*` environment variables and checked as they are read."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.errors import ChextrievError
from model.precision import DTYPES, RUNTIMES, check_device_name
from model.preprocessing import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from model.saliency_scale import DEFAULT_NOISE_FLOOR, DEFAULT_SCALE_MAX, SaliencyScale

logger = logging.getLogger(__name__)

ENV_PREFIX = "CHEXTRIEV_"
# CHEXTRIEV_* variables that other parts of the project read, not the service settings.
OTHER_VARIABLES = frozenset({
    "CHEXTRIEV_VENV",  # scripts/bootstrap.sh
    "CHEXTRIEV_SHARED_DATA", "CHEXTRIEV_TEST_POSTGRES_URL",  # the test suite
    "CHEXTRIEV_DATABASE_WAIT_SECONDS",  # docker/common.sh
    "CHEXTRIEV_DATABASE_URL_FILE", "CHEXTRIEV_ADMIN_TOKEN_FILE", "CHEXTRIEV_PATIENT_SALT_FILE",  # secrets
    "CHEXTRIEV_MILVUS_TOKEN_FILE",
    "CHEXTRIEV_RUN", "CHEXTRIEV_RUNS_DIR", "CHEXTRIEV_CHECKPOINTS_DIR", "CHEXTRIEV_TRAIN_OPTIONS",
    "CHEXTRIEV_INDEX_OPTIONS", "CHEXTRIEV_GALLERY_SPLIT",  # docker/entrypoint-trainer.sh
})


class SettingsError(ChextrievError):
    """A CHEXTRIEV_* variable holds a value the service cannot use; the message names each one."""


class Settings(BaseSettings):
    """Every setting of the service; `CHEXTRIEV_<FIELD>` in the environment overrides a default."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    database_url: str = "sqlite:///./var/chextriev.db"
    # Where snapshots are published and served from (service.index_backend): "local", the snapshot
    # directories of `index_store` searched in this process; or "milvus", a collection per version in
    # the Milvus at `milvus_uri` (a milvus-lite file, or http://host:19530), `index_store` then holding
    # only each version's occlusion sidecar. The active version is also the alias `milvus_alias`.
    index_backend: Literal["local", "milvus"] = "local"
    index_store: str = "./var/index"
    milvus_uri: str = "./var/milvus.db"
    milvus_token: SecretStr | None = None
    milvus_alias: str = "chextriev_active"
    checkpoint: str = "./var/checkpoint"
    image_root: str = "./var/images"
    device: str = "cpu"
    dtype: str = "float32"
    runtime: Literal[RUNTIMES] = "auto"  # the backbone's runtime (model.runtime): auto, torch or onnx
    # The backbone's ImageNet weights: "default" (the architecture's published weights, from the
    # package or torchvision's cache) or the path of a weight file (model.backbones.build_backbone).
    backbone_weights: str = "default"
    # The anatomy model that finds the regions of a query sent without them: an ONNX file from
    # `chextriev anatomy train`; unset: the one shipped in the package (model/anatomy_weights).
    anatomy_model: str | None = None
    # Dynamic micro-batching (service.embed_batcher): how long a search waits for others to share its
    # backbone pass, in milliseconds; 0 embeds each search on its own.
    batch_wait_ms: float = Field(default=0.0, ge=0, le=1000)
    batch_max_images: int = Field(default=8, gt=0)
    # Occlusion embeddings of cases whose snapshot has none, kept for saliency (service.case_occlusions);
    # each is 19 x D floats (78 KB at D = 1024). Each search has those of its first
    # `occlusion_warm_results` results computed in the background while no search runs (0: none).
    occlusion_cache_size: int = Field(default=256, gt=0)
    occlusion_warm_results: int = Field(default=3, ge=0)
    # Region-level search (POST /search with regions_of_interest): None scores every gallery case (exact);
    # a number M re-ranks only the M best cases of the whole-image search (see README, "Region-level search").
    region_search_shortlist: int | None = Field(default=None, gt=0)
    # Saliency (model.saliency_scale.SaliencyScale): a region stands out when its similarity drop exceeds the
    # noise floor (measured by `chextriev bench saliency-noise`); drops are drawn on a fixed scale from 0
    # to `saliency_scale_max`.
    saliency_noise_floor: float = Field(default=DEFAULT_NOISE_FLOOR, ge=0, le=2)
    saliency_scale_max: float = Field(default=DEFAULT_SCALE_MAX, gt=0, le=2)
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
    load_retry_seconds: float = Field(default=10.0, gt=0)
    # Searches, saliency and region finding in progress at once, and how many more may wait for a
    # slot (their uploads unread); one more is answered 503 at once.
    max_concurrent_searches: int = Field(default_factory=lambda: os.cpu_count() or 1, gt=0)
    max_queued_searches: int = Field(default=64, ge=0)
    # The DICOMweb archive (PACS) that `POST /search` fetches a study from by its UIDs and that
    # `chextriev gallery import` reads (service.dicomweb): its base URL (Orthanc: http://host:8042/dicom-web),
    # the seconds one request to it may take, and its credentials: a user name with the password in a
    # file, or a bearer token in a file (secrets never sit in a variable's value nor in a request).
    dicomweb_url: str | None = None
    dicomweb_timeout_s: float = Field(default=10.0, gt=0, le=600)
    dicomweb_username: str | None = None
    dicomweb_password_file: str | None = None
    dicomweb_token_file: str | None = None
    # Where `/cases/{id}` links a case imported from the archive, e.g. Orthanc's viewer
    # "http://pacs:8042/ui/app/#/filtered-studies?StudyInstanceUID={study_uid}" or OHIF's
    # "https://ohif.example/viewer?StudyInstanceUIDs={study_uid}"; placeholders {study_uid}, {series_uid},
    # {sop_uid}.
    study_url_template: str | None = None

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        try:
            return check_device_name(value)
        except ChextrievError as error:
            raise ValueError(str(error)) from None

    @field_validator("saliency_scale_max")
    @classmethod
    def _scale_above_floor(cls, value: float, info: ValidationInfo) -> float:
        floor = info.data.get("saliency_noise_floor")
        if floor is not None and value <= floor:
            raise ValueError(f"the scale's top ({value}) must be above the noise floor "
                             f"CHEXTRIEV_SALIENCY_NOISE_FLOOR ({floor})")
        return value

    @property
    def saliency_scale(self) -> SaliencyScale:
        """The noise floor and colour scale of saliency answers."""
        return SaliencyScale(self.saliency_noise_floor, self.saliency_scale_max)

    @field_validator("dicomweb_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("expected the archive's DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
        return value

    @field_validator("study_url_template")
    @classmethod
    def _known_placeholders(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                value.format(study_uid="", series_uid="", sop_uid="")
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(f"use only the placeholders {{study_uid}}, {{series_uid}} and {{sop_uid}} "
                                 f"({error!r})") from None
        return value

    @model_validator(mode="after")
    def _one_kind_of_archive_credentials(self) -> Settings:
        if self.dicomweb_token_file is not None and self.dicomweb_password_file is not None:
            raise ValueError("give the DICOMweb archive a password file or a token file, not both")
        if (self.dicomweb_username is None) != (self.dicomweb_password_file is None):
            raise ValueError("DICOMweb basic authentication needs both DICOMWEB_USERNAME and DICOMWEB_PASSWORD_FILE")
        return self

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value not in DTYPES:
            raise ValueError(f"unknown dtype {value!r}; expected one of {', '.join(DTYPES)}")
        return value


def read_settings() -> Settings:
    """The settings from the environment; a SettingsError names every variable with an unusable value,
    and a warning names every CHEXTRIEV_* variable that nothing reads (a misspelt name is ignored)."""
    for name in unknown_variables(os.environ):
        logger.warning("unknown setting ignored: check its spelling", extra={"variable": name})
    try:
        return Settings()
    except ValidationError as error:
        problems = "; ".join(f"{ENV_PREFIX}{'_'.join(map(str, problem['loc'])).upper()}: {problem['msg']}"
                             for problem in error.errors())
        raise SettingsError(f"invalid settings: {problems}") from None


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """The CHEXTRIEV_* names in `environ` that are neither settings nor read elsewhere in the project."""
    known = {f"{ENV_PREFIX}{field.upper()}" for field in Settings.model_fields} | OTHER_VARIABLES
    return sorted(name for name in environ if name.upper().startswith(ENV_PREFIX) and name.upper() not in known)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read from the environment once (see read_settings)."""
    return read_settings()
