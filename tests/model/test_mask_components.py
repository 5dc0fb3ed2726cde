"""The largest 4-connected part of a mask, checked against shapes whose parts are known."""

from __future__ import annotations

import numpy as np

from model.mask_components import largest_component


def test_the_largest_of_several_parts_is_kept_whole():
    mask = np.zeros((40, 60), dtype=bool)
    mask[5:30, 5:20] = True  # 375 pixels
    mask[2:8, 40:58] = True  # 108 pixels
    mask[35, 0:60] = True  # 60 pixels, a one-row part
    part = largest_component(mask)
    assert part.sum() == 375 and part[5:30, 5:20].all()


def test_diagonal_neighbours_are_not_connected():
    mask = np.eye(5, dtype=bool)
    mask[0, 0:2] = True
    assert largest_component(mask).sum() == 3  # (0, 0), (0, 1) and (1, 1) below it; (2, 2) only touches a corner


def test_a_u_shape_joined_only_at_the_bottom_is_one_part():
    mask = np.zeros((30, 30), dtype=bool)
    mask[0:25, 2:6] = True
    mask[0:25, 20:24] = True
    mask[25:28, 2:24] = True  # rows above see two runs that one run below joins
    mask[0:3, 10:12] = True  # a separate small part
    part = largest_component(mask)
    assert part.sum() == mask.sum() - 6 and not part[0:3, 10:12].any()


def test_a_comb_whose_teeth_meet_in_its_last_row_is_one_part():
    mask = np.zeros((20, 21), dtype=bool)
    mask[:, ::2] = True  # 11 teeth, each its own part until the last row joins them
    mask[19, :] = True
    assert largest_component(mask).sum() == mask.sum()


def test_an_empty_mask_gives_an_empty_part():
    assert not largest_component(np.zeros((8, 8), dtype=bool)).any()
