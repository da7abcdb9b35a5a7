"""padim.image_checks: when one image's score is flagged as possibly off, on hand-computed cases."""

import numpy as np
import pytest

from padim.image_checks import aspect_differs, aspect_warning, image_warnings
from padim.value_range import EIGHT_BIT, ValueRange, kind_mismatch


@pytest.mark.parametrize("size,differs", [
    ((64, 64), False),
    ((64, 73), False),   # w/h 1.141: within 15 %
    ((64, 74), True),    # 1.156
    ((74, 64), True),    # tall by as much: the same
    ((73, 64), False),
    ((640, 640), False),  # the size does not matter, only the ratio
])
def test_aspect_differs_beyond_15_percent_either_way(size, differs):
    assert aspect_differs(size, (64, 64)) is differs


def test_aspect_is_judged_against_a_non_square_input():
    assert not aspect_differs((460, 1130), (160, 400))  # 2.457 against 2.5
    assert aspect_differs((460, 460), (160, 400))
    assert aspect_warning((460, 460), (160, 400)) == (
        "aspect ratio 1.00 (w/h) differs from the training images' 2.50 by more than 15 %: resized to 160×400, "
        "it may score high")
    assert aspect_warning((160, 400), (160, 400)) is None


def test_kind_mismatch_only_where_the_range_does_not_apply():
    deep = ("deeper-than-8-bit integer pixels, but the model's value range 0..255 is for 8-bit images; "
            "mapped by its own type's full scale instead")
    assert kind_mismatch(np.dtype(np.uint16), EIGHT_BIT, "uint8") == deep
    assert kind_mismatch(np.dtype(np.uint8), EIGHT_BIT, "uint8") is None
    assert kind_mismatch(np.dtype(bool), EIGHT_BIT, "uint8") is None  # boolean maps the same
    assert kind_mismatch(np.dtype(np.uint16), None, "uint8") is None  # no range: every image by its type
    assert kind_mismatch(np.dtype(np.uint16), EIGHT_BIT, None) is None  # no kind: the range maps all
    assert kind_mismatch(np.dtype(np.uint8), ValueRange(0.0, 4095.0), "int").startswith(
        "8-bit pixels, but the model's value range 0..4095 is for deeper-than-8-bit integer images")


def test_image_warnings_lists_each_cause_once():
    wide16 = np.zeros((80, 112, 3), np.uint16)
    found = image_warnings(wide16, (64, 64), True, EIGHT_BIT, "uint8")
    assert len(found) == 2 and found[0].startswith("aspect ratio 1.40") and found[1].startswith("deeper-than-8-bit")
    assert image_warnings(wide16, (64, 64), False, EIGHT_BIT, "uint8") == found[1:]  # geometry set by the user
    assert image_warnings(np.zeros((64, 64), np.uint8), (64, 64), True, EIGHT_BIT, "uint8") == []
