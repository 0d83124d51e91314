from __future__ import annotations

import numpy as np
import pytest

from bts_monai.errors import BtsInputError
from bts_monai.labels import get_scheme


def test_brats_regions_nested_and_round_trip():
    s = get_scheme("brats2020")
    label = np.array([0, 1, 2, 4, 4, 2])
    regions = s.to_regions(label)
    assert s.region_names == ["TC", "WT", "ET"]
    np.testing.assert_array_equal(regions[0], [0, 1, 0, 1, 1, 0])  # TC = 1, 4
    np.testing.assert_array_equal(regions[1], [0, 1, 1, 1, 1, 1])  # WT = 1, 2, 4
    np.testing.assert_array_equal(regions[2], [0, 0, 0, 1, 1, 0])  # ET = 4
    np.testing.assert_array_equal(s.from_regions(regions), label)


def test_2023_scheme_uses_3_for_et():
    s = get_scheme("brats2023")
    label = np.array([0, 1, 2, 3])
    np.testing.assert_array_equal(s.to_regions(label)[2], [0, 0, 0, 1])
    np.testing.assert_array_equal(s.from_regions(s.to_regions(label)), label)
    with pytest.raises(BtsInputError, match="unexpected: \\[4\\]"):
        s.to_regions(np.array([0, 4]), "x_seg.nii.gz")


def test_legacy_scheme_rejects_3_and_names_the_file():
    with pytest.raises(BtsInputError, match=r"case_seg\.nii\.gz: label values \[0, 3\]"):
        get_scheme("brats2021").to_regions(np.array([0, 3]), "case_seg.nii.gz")


def test_index_map_round_trip_and_lgg():
    s = get_scheme("brats2019")
    label = np.array([0, 4, 2, 1])
    idx = s.to_index_map(label)
    np.testing.assert_array_equal(idx, [0, 3, 2, 1])
    np.testing.assert_array_equal(s.from_index_map(idx), label)
    lgg = get_scheme("lgg")
    np.testing.assert_array_equal(lgg.to_regions(np.array([0, 255]))[0], [False, True])
    np.testing.assert_array_equal(lgg.from_regions(np.array([[False, True]])), [0, 255])


def test_unknown_scheme():
    with pytest.raises(ValueError, match="unknown label scheme"):
        get_scheme("brats1999")


def test_convert_labels_by_region_name_and_float_labels():
    from bts_monai.labels import convert_labels

    legacy = np.array([0, 1, 2, 4], dtype=np.int16)
    np.testing.assert_array_equal(convert_labels(legacy, "brats2018", "brats2023"), [0, 1, 2, 3])
    np.testing.assert_array_equal(convert_labels(legacy, "brats2021", "msd"), [0, 2, 1, 3])
    rc = np.array([0.0, 4.0, 3.0], dtype=np.float32)  # BraTS 2024 resection cavity, float32 seg
    np.testing.assert_array_equal(convert_labels(rc, "brats2024", "brats2021"), [0, 0, 4])
    masks = get_scheme("brats2023").region_masks(np.array([0.0, 3.0]), ["TC", "WT", "ET", "RC"])
    assert masks.tolist() == [[False, True], [False, True], [False, True], [False, False]]


def test_nnunet_labels_plain_and_region_based():
    from bts_monai.labels import nnunet_labels, scheme_from_nnunet

    plain = {"background": 0, "edema": 1, "non_enhancing_tumor": 2, "enhancing_tumour": 3}
    assert scheme_from_nnunet(plain) is get_scheme("msd")
    regions = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}
    assert scheme_from_nnunet(regions) is get_scheme("msd")
    labels, order = nnunet_labels("brats2023")
    assert scheme_from_nnunet(labels) is get_scheme("brats2023") and order == [2, 1, 3]
    other = scheme_from_nnunet({"background": 0, "liver": 1})
    assert other.regions == {"liver": (1,)}
    with pytest.raises(BtsInputError, match="no background"):
        scheme_from_nnunet({"edema": 1}, path="dataset.json")
