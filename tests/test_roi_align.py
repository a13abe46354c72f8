import importlib.util

import pytest
import torch

from fos.models.roi_align import roi_align


def ramp(h=6, w=8):
    # f(y, x) = 10*y + x: bilinear interpolation reproduces it exactly inside the map
    y = torch.arange(h, dtype=torch.float32).view(h, 1)
    x = torch.arange(w, dtype=torch.float32).view(1, w)
    return (10 * y + x).view(1, 1, h, w)


def test_single_sample_hand_computed():
    f = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)  # f(y, x) = 4y + x
    out = roi_align(f, torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]]), 1, 1.0, sampling_ratio=1)
    assert out.item() == pytest.approx(4 * 1.5 + 1.5)  # the bin centre (1.5, 1.5)


def test_2x2_bins_hand_computed():
    f = ramp()
    # roi x 1..5, y 1..3 -> bins 2 wide, 1 high; one sample per bin at the bin centre
    out = roi_align(f, torch.tensor([[0, 1.0, 1.0, 5.0, 3.0]]), 2, 1.0, sampling_ratio=1)
    expected = torch.tensor([[10 * 1.5 + 2, 10 * 1.5 + 4], [10 * 2.5 + 2, 10 * 2.5 + 4]])
    assert torch.allclose(out[0, 0], expected)


def test_averaging_of_samples_and_scale():
    f = ramp()
    # spatial_scale 0.5: roi (2,2)-(10,10) in input pixels is (1,1)-(5,5) on the map; 2x2 samples per bin
    out = roi_align(f, torch.tensor([[0, 2.0, 2.0, 10.0, 10.0]]), 1, 0.5, sampling_ratio=2)
    # samples at 2 and 4 on each axis -> mean = f(3, 3) by linearity
    assert out.item() == pytest.approx(33.0)


def test_edge_clamp_and_outside_is_zero():
    f = ramp(4, 4)
    # a sample past the last row (y in (H-1, H]) takes the last row's value
    out = roi_align(f, torch.tensor([[0, 0.0, 3.2, 1.0, 3.8]]), 1, 1.0, sampling_ratio=1)
    assert out.item() == pytest.approx(10 * 3 + 0.5)
    # a sample beyond H (y > H) counts as zero
    out = roi_align(f, torch.tensor([[0, 0.0, 5.0, 1.0, 7.0]]), 1, 1.0, sampling_ratio=1)
    assert out.item() == 0.0


def test_batch_index_and_adaptive_grid():
    f = torch.cat([ramp(), 2 * ramp()])
    rois = torch.tensor([[1, 1.0, 1.0, 5.0, 3.0], [0, 1.0, 1.0, 5.0, 3.0]])
    a = roi_align(f, rois, 2, 1.0, sampling_ratio=-1)  # adaptive: ceil(2/2)=1 x ceil(4/2)=2 samples
    assert torch.allclose(a[0], 2 * a[1])
    assert torch.allclose(a[1, 0], torch.tensor([[17.0, 19.0], [27.0, 29.0]]))


def test_gradients_flow():
    f = ramp().requires_grad_(True)
    roi_align(f, torch.tensor([[0, 1.0, 1.0, 5.0, 3.0]]), 2, 1.0, 2).sum().backward()
    assert f.grad is not None and f.grad.sum().item() == pytest.approx(4.0)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision not installed")
def test_matches_torchvision():
    from torchvision.ops import roi_align as tv

    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 3, 7, 7, generator=g)
    rois = torch.tensor([[0, 10.0, 20.0, 150.0, 200.0], [1, -5.0, 3.0, 230.0, 100.0], [0, 50, 50, 52, 51.0]])
    for sr in (-1, 2):
        for aligned in (False, True):
            ours = roi_align(f, rois, 7, 1 / 32, sr, aligned)
            assert torch.allclose(ours, tv(f, rois, 7, 1 / 32, sr, aligned), atol=1e-5)
