"""The shipped anatomy model on real radiographs: it finds the lungs where the experts boxed them on
bundled radiographs it never trained on, and refuses images that are not frontal chest radiographs."""

from __future__ import annotations

import numpy as np
import pytest

from model.anatomy import box_iou
from model.anatomy_model import LUNGS, SHIPPED_MODEL, AnatomyModel, AnatomyModelError, NoChestFoundError
from model.catalogue import NUM_REGIONS
from model.imaging import decode_image

# Each lung box of a held-out bundled radiograph must overlap the expert's by at least this much. On
# 396 held-out cxr-lungbox radiographs the shipped model's per-lung IoU has a median of 0.88 and a
# first quartile of 0.82-0.84 (its model card), so 0.7 leaves room for a hard case, while a box off
# by a fifth of a lung's width or height fails.
MIN_LUNG_IOU = 0.7
MAX_SHIPPED_BYTES = 8 * 2**20


@pytest.fixture(scope="module")
def model() -> AnatomyModel:
    return AnatomyModel.load()


@pytest.fixture(scope="module")
def held_out_cases(model, sample_cases):
    """The bundled radiographs the shipped model was neither trained nor validated on."""
    cases = [case for case in sample_cases if f"cxr-lungbox/{case.image_path.stem}" not in model.training_images]
    assert len(cases) >= 3, "the shipped model's metadata should leave some bundled radiographs out"
    return cases


def test_the_shipped_model_is_small_and_has_a_model_card(model):
    assert SHIPPED_MODEL.stat().st_size < MAX_SHIPPED_BYTES
    card = (SHIPPED_MODEL.parent / "MODEL_CARD.md").read_text()
    for words in ("CC BY", "held-out", "must not", "cxr-lungbox"):
        assert words in card
    assert set(LUNGS) <= set(model.trained_structures)
    assert len(model.training_images) > 50 and all(key.startswith("cxr-lungbox/") for key in model.training_images)


def test_it_finds_the_lungs_where_the_experts_boxed_them(model, held_out_cases):
    for case in held_out_cases:
        image = decode_image(case.image_path)
        prediction = model.predict(image.pixels)
        for name, expert in (("right lung", case.right_lung), ("left lung", case.left_lung)):
            iou = box_iou(prediction.structures[name].box, expert)
            assert iou >= MIN_LUNG_IOU, (case.case_id, name, iou)
        assert prediction.regions.shape == (NUM_REGIONS, 4) and prediction.regions.dtype == np.float32


def test_outlines_are_closed_polygons_inside_their_boxes(model, held_out_cases):
    image = decode_image(held_out_cases[0].image_path)
    for structure in model.predict(image.pixels).structures.values():
        x1, y1, x2, y2 = structure.box
        xs, ys = zip(*structure.outline, strict=True)
        assert len(structure.outline) >= 8
        assert x1 - 1 <= min(xs) and max(xs) <= x2 + 1 and y1 - 1 <= min(ys) and max(ys) <= y2 + 1
        assert 0.02 < structure.area_fraction < 0.5 and structure.confidence > 0.75


def _camera() -> np.ndarray:
    from skimage import data

    return data.camera().astype(np.float32) / 255


@pytest.mark.parametrize("kind", ["blank", "noise", "photograph", "turned radiograph", "upside-down radiograph"])
def test_images_that_are_not_frontal_chests_are_refused(model, held_out_cases, kind):
    radiograph = decode_image(held_out_cases[0].image_path).pixels
    pixels = {
        "blank": lambda: np.full((600, 500), 0.4, dtype=np.float32),
        "noise": lambda: np.random.default_rng(0).uniform(0, 1, (512, 512)).astype(np.float32),
        "photograph": _camera,
        "turned radiograph": lambda: np.ascontiguousarray(np.rot90(radiograph)),
        "upside-down radiograph": lambda: np.ascontiguousarray(np.flipud(radiograph)),
    }[kind]()
    with pytest.raises(NoChestFoundError, match="frontal chest"):
        model.predict(pixels)


def test_an_unusable_model_file_is_refused_naming_the_file(tmp_path):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(SHIPPED_MODEL.read_bytes()[:50_000])
    with pytest.raises(AnatomyModelError, match="cannot load the anatomy model truncated.onnx"):
        AnatomyModel.load(truncated)
    with pytest.raises(AnatomyModelError, match="cannot load the anatomy model absent.onnx"):
        AnatomyModel.load(tmp_path / "absent.onnx")


def test_an_onnx_file_without_the_metadata_is_refused(tmp_path):
    import onnx

    model = onnx.load(SHIPPED_MODEL)
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, bare)
    with pytest.raises(AnatomyModelError, match="lacks the metadata input_size, trained_structures"):
        AnatomyModel.load(bare)
