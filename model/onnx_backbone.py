"""The frozen backbone exported to ONNX and run by ONNX Runtime on the CPU.

The export is cached per backbone fingerprint under $XDG_CACHE_HOME/chextriev/onnx (default
~/.cache), written through a temporary file and a rename, so that concurrent processes never read
a half-written model. A cache file that ONNX Runtime cannot load is exported again; where the cache
directory is not writable, the export is used from memory. A service whose checkpoint names a
backbone fingerprint with a cached export loads only that (`OnnxBackbone.from_cache`): a warm start
then never builds the PyTorch backbone.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path

import onnxruntime as ort
import torch
from torch import Tensor

from model.backbones import Backbone
from model.fileio import atomic_write_bytes
from model.preprocessing import CROP_SIZE

logger = logging.getLogger(__name__)

OPSET = 17
INPUT, OUTPUT = "crops", "features"


def default_cache_dir() -> Path:
    """Where exported backbones are kept: $XDG_CACHE_HOME/chextriev/onnx, ~/.cache/chextriev/onnx by default."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chextriev" / "onnx"


def cpu_session(model: Path | bytes) -> ort.InferenceSession:
    """An ONNX Runtime CPU session on the physical cores, whose idle workers sleep rather than spin
    (the network and other searches need the cores next)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = physical_cores()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model) if isinstance(model, Path) else model, options,
                                providers=["CPUExecutionProvider"])


def physical_cores() -> int:
    """Physical cores this process may run on: hyperthread siblings count once."""
    cpus = os.sched_getaffinity(0)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:  # no sysfs topology (some containers): count every CPU
            return len(cpus)
    return len(cores)


def export_onnx(backbone: Backbone) -> bytes:
    """The forward of a float32 CPU backbone as an ONNX model with a dynamic batch axis.

    It uses the TorchScript exporter, deprecated since PyTorch 2.9: the torch.export one needs
    onnxscript, took 20 s instead of 2 for EfficientNet-Lite0, and its model ran slower.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Backbone.forward's shape check is traced as a constant; the export fixes that shape anyway.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the exporter's own, see above
        torch.onnx.export(backbone, (torch.zeros(2, 3, CROP_SIZE, CROP_SIZE),), buffer, dynamo=False,
                          opset_version=OPSET, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "crops"}, OUTPUT: {0: "crops"}})
    return buffer.getvalue()


def cached_export_path(name: str, fingerprint: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the export of the backbone `name` with weights `fingerprint` is cached."""
    return (Path(cache_dir) if cache_dir else default_cache_dir()) / f"{name}-{fingerprint}-opset{OPSET}.onnx"


class OnnxBackbone:
    """A Backbone's forward on ONNX Runtime: (N, 3, CROP_SIZE, CROP_SIZE) crops -> (N, feature_dim) float32."""

    def __init__(self, backbone: Backbone, cache_dir: str | os.PathLike | None = None):
        self.name, self.fingerprint, self.feature_dim = backbone.name, backbone.fingerprint, backbone.feature_dim
        self.pooling = backbone.pooling
        self.path = cached_export_path(backbone.name, backbone.fingerprint, cache_dir)
        self.session = self._cached_session(backbone)

    @classmethod
    def from_cache(cls, name: str, fingerprint: str, feature_dim: int, pooling: str = "mean",
                   cache_dir: str | os.PathLike | None = None) -> OnnxBackbone | None:
        """The export an earlier run cached for the backbone `name` with weights `fingerprint` (which
        covers its `pooling`), loaded
        without building the backbone (no timm, no torchvision, no weight file); None when there is
        none or ONNX Runtime cannot load it. The file name carries the fingerprint, and exports are
        only ever written whole, so the cached file computes exactly that backbone's features."""
        backbone = cls.__new__(cls)
        backbone.name, backbone.fingerprint, backbone.feature_dim = name, fingerprint, feature_dim
        backbone.pooling = pooling
        backbone.path = cached_export_path(name, fingerprint, cache_dir)
        if not backbone.path.is_file():
            return None
        try:
            backbone.session = backbone._session(backbone.path)
        except Exception as error:  # noqa: BLE001 - ONNX Runtime's errors share no narrower base
            logger.warning("unusable ONNX backbone cache file: building the backbone",
                           extra={"path": str(backbone.path), "problem": f"{type(error).__name__}: {error}"})
            return None
        return backbone

    def __call__(self, crops: Tensor) -> Tensor:
        inputs = crops.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run([OUTPUT], {INPUT: inputs})[0])

    def _cached_session(self, backbone: Backbone) -> ort.InferenceSession:
        if self.path.is_file():
            try:
                return self._session(self.path)
            except Exception as error:  # noqa: BLE001 - ONNX Runtime's errors share no narrower base
                logger.warning("unusable ONNX backbone cache file: exporting it again",
                               extra={"path": str(self.path), "problem": f"{type(error).__name__}: {error}"})
        model = export_onnx(backbone)
        try:
            atomic_write_bytes(self.path, model)
        except OSError as error:
            logger.warning("ONNX backbone cache not writable: using the export from memory",
                           extra={"path": str(self.path), "problem": str(error)})
        return self._session(model)

    def _session(self, model: Path | bytes) -> ort.InferenceSession:
        session = cpu_session(model)
        shape = session.get_outputs()[0].shape
        if len(shape) != 2 or shape[1] != self.feature_dim:
            raise ValueError(f"the ONNX model gives features of shape {shape}, not (N, {self.feature_dim})")
        return session
