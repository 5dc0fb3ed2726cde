"""Export a trained anatomy network to the ONNX file `model.anatomy_model.AnatomyModel` runs."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Collection

import onnx
import torch

from model.anatomy_model import (
    INPUT_NAME,
    META_DESCRIPTION,
    META_INPUT_SIZE,
    META_TRAINED,
    META_TRAINING_IMAGES,
    OUTPUT_NAME,
)
from model.fileio import atomic_write_bytes
from model.onnx_backbone import OPSET
from trainer.anatomy.network import AnatomyNet


def export_anatomy_model(network: AnatomyNet, size: int, path: str | os.PathLike, *,
                         trained_structures: Collection[str], training_images: Collection[str],
                         description: str) -> None:
    """Write the network (float32, batch of one) with its metadata to `path`, atomically.

    The metadata names the input size, the structures the training data supervised (the others'
    outputs mean nothing), the images trained or validated on (dataset/stem, so that evaluations can
    leave them out) and a one-line description.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's (model.onnx_backbone)
        torch.onnx.export(network.eval().float().cpu(), (torch.zeros(1, 1, size, size),), buffer, dynamo=False,
                          opset_version=OPSET, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    model = onnx.load_from_string(buffer.getvalue())
    metadata = {META_INPUT_SIZE: str(size), META_TRAINED: ",".join(trained_structures),
                META_TRAINING_IMAGES: ",".join(sorted(training_images)), META_DESCRIPTION: description}
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write_bytes(path, model.SerializeToString())
