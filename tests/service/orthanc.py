"""A real Orthanc archive with its DICOMweb plugin on 127.0.0.1, for the DICOMweb tests.

Debian's `orthanc` and `orthanc-dicomweb` packages (`.ci/run` installs them). Each server gets free
ports, its own storage directory and basic authentication; it can be stopped and started again on
the same storage, or frozen (SIGSTOP) to play an archive that does not answer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from tests.dicom_factory import chest_dataset, dicom_file_bytes

ORTHANC = "Orthanc"
PLUGIN_NAME = "libOrthancDicomWeb.so"
PLUGIN_DIRECTORIES = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))
USERNAME, PASSWORD = "chextriev", "orthanc-test-password"
START_SECONDS = 30


def orthanc_missing() -> str | None:
    """Why no Orthanc with DICOMweb can run here, or None when one can."""
    if shutil.which(ORTHANC) is None:
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; .ci/run does it)"
    if dicomweb_plugin() is None:
        return "Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return None


def dicomweb_plugin() -> Path | None:
    """The installed DICOMweb plugin's shared library."""
    return next((directory / PLUGIN_NAME for directory in PLUGIN_DIRECTORIES
                 if (directory / PLUGIN_NAME).is_file()), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class OrthancServer:
    """One Orthanc process on the loopback, storing under `directory`."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        storage = directory / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        self.config = directory / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "chextriev-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": self.port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True, "RegisteredUsers": {USERNAME: PASSWORD},
            "Plugins": [str(dicomweb_plugin())], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    def start(self) -> None:
        """Start Orthanc and wait until its DICOMweb root answers."""
        log = open(self.directory / "orthanc.log", "ab")  # noqa: SIM115 - the process keeps it open
        self.process = subprocess.Popen([ORTHANC, str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.directory)
        log.close()
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.directory}/orthanc.log")
            try:
                if requests.get(f"{self.dicomweb_url}/studies", auth=(USERNAME, PASSWORD), timeout=1).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {START_SECONDS} s")

    def stop(self) -> None:
        """Stop Orthanc (its storage stays); the port is then refused."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # a frozen process must run to exit
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def freeze(self) -> None:
        """Suspend the process: connections are accepted and never answered."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def store(self, files: list[bytes]) -> None:
        """Upload DICOM Part 10 files with STOW-RS (as the README's curl does)."""
        boundary = "chextriev-stow"
        body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
                        for data in files) + f"--{boundary}--\r\n".encode()
        response = requests.post(f"{self.dicomweb_url}/studies", data=body, auth=(USERNAME, PASSWORD), timeout=60,
                                 headers={"Content-Type": f"multipart/related; type=application/dicom; "
                                                          f"boundary={boundary}",
                                          "Accept": "application/dicom+json"})
        response.raise_for_status()
        answer = response.json()
        assert not answer.get("00081198", {}).get("Value"), "STOW-RS refused instances"
        assert len(answer["00081199"]["Value"]) == len(files)


def radiograph_dicom(image_path: Path, *, study_uid: str, view: str = "PA", modality: str = "CR",
                     accession_number: str = "", study_date: str = "20240115") -> bytes:
    """A bundled radiograph as a DICOM Part 10 file of the test patient, in study `study_uid` (a series
    and an instance of its own)."""
    pixels = np.asarray(Image.open(image_path).convert("L"))
    dataset = chest_dataset(pixels)
    dataset.StudyInstanceUID, dataset.Modality, dataset.ViewPosition = study_uid, modality, view
    dataset.AccessionNumber, dataset.StudyDate = accession_number, study_date
    return dicom_file_bytes(dataset)
