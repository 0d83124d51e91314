"""The Predictor's progress callback and display convention: reported from inside the inference,
with the total known before the first window; overlays follow the chosen convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from infer_helpers import MarkerNet, brain_volume, brats_config, lgg_config, marker_case

from bts_monai.inference.predictor import Predictor


class CountingNet(MarkerNet):
    """:class:`MarkerNet` that counts the windows it is given."""

    def __init__(self, out_channels: int = 3) -> None:
        super().__init__(out_channels)
        self.windows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += int(x.shape[0])
        return super().forward(x)


@pytest.mark.parametrize("overlap,batch", [(0.5, 1), (0.25, 2), (0.0, 3)])
def test_callback_counts_every_window_with_the_total_up_front(overlap: float, batch: int) -> None:
    net = CountingNet()
    calls: list[tuple[int, int]] = []
    p = Predictor(net, brats_config(), device="cpu", overlap=overlap, sw_batch_size=batch, progress_callback=None)
    image = torch.from_numpy(np.stack([brain_volume((37, 30, 21), seed=i) for i in range(4)]))
    p.logits(image, progress_callback=lambda done, total: calls.append((done, total)))
    totals = {t for _, t in calls}
    assert len(totals) == 1, calls  # known from the first call on
    (total,) = totals
    assert total == net.windows > 1, (total, net.windows)
    assert total == p.window_count((37, 30, 21))
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == total
    assert len(calls) == -(-total // batch)  # one call per batch of windows


def test_callback_with_tta_and_small_images() -> None:
    """Mirror TTA runs the network 8x per window, but a window is still one step; an image
    smaller than the roi is padded to one window."""
    net = CountingNet()
    calls: list[tuple[int, int]] = []
    p = Predictor(net, brats_config(), device="cpu", tta=True, progress_callback=lambda d, t: calls.append((d, t)))
    p.logits(torch.ones(4, 10, 12, 9))
    assert calls == [(1, 1)] and net.windows == 8


def test_2d_model_counts_slices() -> None:
    net = CountingNet(out_channels=1)
    calls: list[tuple[int, int]] = []
    p = Predictor(net, lgg_config(), device="cpu", progress_callback=lambda d, t: calls.append((d, t)))
    p.logits(torch.ones(3, 32, 32, 5))
    assert calls[-1] == (5, 5) and net.windows == 5


def test_predict_case_reports_progress_and_keeps_the_inferer(tmp_path) -> None:
    case = marker_case(tmp_path, np.diag([-1.0, -1.0, 1.0, 1.0]))
    p = Predictor(MarkerNet(), brats_config(), device="cpu")
    inferer = p.inferer
    calls: list[tuple[int, int]] = []
    pred = p.predict_case(p.load(case), progress_callback=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1][0] == calls[-1][1] > 1
    assert p.inferer is inferer
    assert pred.labels.any()


@pytest.mark.parametrize("convention", ["radiological", "neurological"])
def test_overlay_follows_the_predictors_convention(tmp_path, convention: str) -> None:
    """The marker voxel lies in the patient's right (low x of an LPS grid): it is drawn in the
    axial panel's left half under the radiological convention, its right half otherwise."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    case = marker_case(tmp_path, affine, marker=(7, 17, 13))
    p = Predictor(MarkerNet(), brats_config(), device="cpu", convention=convention)
    pred = p.predict(case)
    assert pred.convention == convention
    rgb = pred.overlay(alpha=1.0)[32:-22].astype(int)  # the panels, without title and legend
    # The axial panel comes first, after 6 px of padding: 30 voxels wide, enlarged so the
    # largest extent (34 voxels) spans three_plane_overlay's min_size of 192 pixels.
    first, width = 6, round(30 * 192 / 34)
    axial = rgb[:, first : first + width]
    red = (axial[..., 0] - axial[..., 1] > 100) & (axial[..., 0] - axial[..., 2] > 100)  # ET's colour
    assert red.any(), "the marker is not drawn"
    on_left = np.nonzero(red.any(0))[0].mean() < width / 2
    assert on_left == (convention == "radiological")


def test_unknown_convention_is_refused() -> None:
    with pytest.raises(ValueError, match="convention"):
        Predictor(MarkerNet(), brats_config(), device="cpu", convention="mirror")
