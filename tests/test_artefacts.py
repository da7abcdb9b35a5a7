"""Names of per-image output files (padim.artefacts): distinct, stable, plain where possible."""

import random
from pathlib import PurePosixPath

import pytest

from padim.artefacts import artefact_names, check_inputs_kept


@pytest.mark.parametrize("names, expected", [
    (["a.png", "b.jpg", "sub/c.tif"], ["a.png", "b.png", "sub/c.png"]),
    (["x/a.png", "y/a.jpg"], ["x/a.png", "y/a.png"]),  # other folders: no clash
    (["a.jpg", "a.png", "b.bmp"], ["a.jpg.png", "a.png.png", "b.png"]),
    (["A.jpg", "a.bmp"], ["A.jpg.png", "a.bmp.png"]),  # one file on a case-insensitive disk
    # a.jpg and a.png keep their suffix; an input named a.jpg.png then clashes with a.jpg's: a counter
    (["a.jpg", "a.jpg.png", "a.png"], ["a.jpg.png", "a.jpg.2.png", "a.png.png"]),
])
def test_hand_cases(names, expected):
    assert artefact_names(names, ".png") == expected


def test_distinct_on_random_names_and_plain_where_nothing_clashes():
    rng = random.Random(0)
    for _ in range(300):
        names = sorted({rng.choice(["", "s/", "S/"]) + rng.choice("aAb") + rng.choice(["", ".jpg", ".JPG"])
                        + rng.choice([".png", ".bmp", ".npy"]) for _ in range(rng.randint(1, 12))})
        for suffix in (".png", ".npy"):
            out = artefact_names(names, suffix)
            assert len({o.casefold() for o in out}) == len(out)
            assert all(o.endswith(suffix) for o in out)
            assert artefact_names(list(names), suffix) == out  # depends on the list only
            plain = [PurePosixPath(n).with_suffix(suffix).as_posix() for n in names]
            if len({p.casefold() for p in plain}) == len(plain):
                assert out == plain  # nothing clashes: every name is the plain one
            else:
                assert out != plain


def test_an_input_image_or_the_input_folder_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    image = tmp_path / "in" / "a.png"
    image.write_bytes(b"x")
    with pytest.raises(ValueError, match="is the input folder"):
        check_inputs_kept(tmp_path / "in", ["b.png"], [image], tmp_path / "in", "heatmaps folder")
    with pytest.raises(ValueError, match="is the input folder"):  # one input file: its folder
        check_inputs_kept(tmp_path / "in", ["b.png"], [image], image, "heatmaps folder")
    link = tmp_path / "out" / "a.png"  # the folder's file resolves to the input image
    link.parent.mkdir()
    link.symlink_to(image)
    with pytest.raises(ValueError, match="writing 'a.png' would replace the input image"):
        check_inputs_kept(tmp_path / "out", ["a.png"], [image], tmp_path / "in", "heatmaps folder")
    check_inputs_kept(tmp_path / "out", ["b.png"], [image], tmp_path / "in", "heatmaps folder")
