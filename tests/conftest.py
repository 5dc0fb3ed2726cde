"""Shared fixtures: the bundled sample radiographs and, when present, ../shared/data.

Every log record of the session is kept as the service's JSON log line (extras included); at the
end of the session the run fails if one of them holds a patient name or id of the DICOM test files
or the admin token of the API tests.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from service.logging_setup import JsonFormatter
from tests.dicom_factory import PATIENT_ID, PATIENT_NAME
from trainer.demo.samples import load_sample_cases

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CHEXTRIEV_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
API_TESTS = "tests.service.test_api"  # its ADMIN_TOKEN is looked for once its tests have run
MAX_LEAKS_SHOWN = 20
MIN_NAME_PART = 3  # shorter parts of a name (initials) would match everywhere
MAX_RECORD_CHARS = 400


class LogRecorder(logging.Handler):
    """Every record it is handed, as (logger name, the service's JSON log line)."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(JsonFormatter())
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append((record.name, self.format(record)))
        except Exception:  # noqa: BLE001 - logging's contract: a handler reports its own failures
            self.handleError(record)


@dataclass(frozen=True)
class Secret:
    """A value no log line may hold, matched as a whole token; `source` names it in place of its value."""

    source: str
    value: str

    @property
    def pattern(self) -> re.Pattern[str]:
        # A number is not matched inside a longer one (a duration, a decimal fraction).
        edge = "[0-9A-Za-z.]" if self.value.isdigit() else "[0-9A-Za-z]"
        return re.compile(f"(?<!{edge}){re.escape(self.value)}(?!{edge})")

    def masked(self, text: str) -> str:
        """`text` with this value shown by its first characters only."""
        shown = max(1, len(self.value) // 4)
        return self.pattern.sub(self.value[:shown] + "*" * (len(self.value) - shown), text)


LOG_RECORDER = LogRecorder()


def pytest_configure(config: pytest.Config) -> None:
    keep_recording_logs()
    # The ONNX exports of the backbones the tests build (model.onnx_backbone) go to a scratch cache
    # removed at the end, not to the user's ~/.cache; child processes inherit it.
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="chextriev-test-cache-")


@pytest.fixture(autouse=True)
def _logs_recorded() -> None:
    """The recorder, back on the root logger: an in-process `chextriev` command replaces its handlers."""
    keep_recording_logs()


def keep_recording_logs() -> None:
    """The recorder on the root logger, which lets every record through (DEBUG)."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    if LOG_RECORDER not in root.handlers:
        root.addHandler(LOG_RECORDER)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the scratch cache; fail the run when a log line holds a secret, naming the logger and the
    record (masked)."""
    shutil.rmtree(os.environ["XDG_CACHE_HOME"], ignore_errors=True)
    secrets = session_secrets()
    leaks = [(logger_name, line, found) for logger_name, line in LOG_RECORDER.lines
             if (found := [secret for secret in secrets if secret.pattern.search(line)])]
    if not leaks:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    reporter.write_line("")
    reporter.write_sep("=", f"{len(leaks)} log records hold patient identifiers or the admin token", red=True)
    for logger_name, line, found in leaks[:MAX_LEAKS_SHOWN]:
        for secret in secrets:
            line = secret.masked(line)
        holds = ", ".join(dict.fromkeys(secret.source for secret in found))
        reporter.write_line(f"logger {logger_name!r} logged {holds}: {line[:MAX_RECORD_CHARS]}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def session_secrets() -> list[Secret]:
    """The patient names (each name component) and ids of the DICOM test files, and the admin token
    of the API tests when they ran."""
    secrets = patient_secrets("tests/dicom_factory.py", PATIENT_NAME, PATIENT_ID)
    for path in sorted((SHARED_DATA / "dicom").glob("*.dcm")):
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        secrets += patient_secrets(path.name, str(dataset.get("PatientName", "")),
                                   str(dataset.get("PatientID", "")))
    if API_TESTS in sys.modules:
        secrets.append(Secret(f"ADMIN_TOKEN of {API_TESTS}", sys.modules[API_TESTS].ADMIN_TOKEN))
    return secrets


def patient_secrets(source: str, name: str, patient_id: str) -> list[Secret]:
    """The components of a DICOM person name (family^given^middle..., each as a client may render it
    alone; initials left out) and the patient id, as found in `source`."""
    parts = [part.strip() for part in re.split(r"[\^=]", name) if len(part.strip()) >= MIN_NAME_PART]
    ids = [patient_id.strip()] if patient_id.strip() else []
    return ([Secret(f"patient name of {source}", part) for part in parts]
            + [Secret(f"patient id of {source}", value) for value in ids])


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets of ../shared/data; tests using it skip on a clone without them."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared data sets at {SHARED_DATA} (set CHEXTRIEV_SHARED_DATA); "
                    "a fresh clone runs only the bundled-sample tests")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sample_cases():
    """The 48 openly licensed radiographs bundled with the package."""
    return load_sample_cases()
