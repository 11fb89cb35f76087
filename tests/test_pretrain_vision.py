"""The vision pretraining's targets, its symmetries and its crops (``training.pretrain_vision``)."""

import numpy as np
import pytest
import torch
from PIL import Image

from qground.builder import config_nano
from qground.config import READOUT_SUB
from qground.modeling import DistortionReadout
from qground.processor import QGroundProcessor
from qground.taxonomy import CLASS_NAMES
from training.pretrain_vision import batch_globals, crop, dihedral, global_targets, pool_targets, pretrain

_PIL = {1: Image.Transpose.FLIP_LEFT_RIGHT, 2: Image.Transpose.FLIP_TOP_BOTTOM, 4: Image.Transpose.TRANSPOSE}


def _transformed(image: Image.Image, k: int) -> Image.Image:
    for bit in (1, 2, 4):  # dihedral's order: mirror left–right, then top–bottom, then transpose
        if k & bit:
            image = image.transpose(_PIL[bit])
    return image


def test_pool_targets_lay_sub_cells_out_as_the_readout_does():
    patch, sub, classes = 8, READOUT_SUB, 5
    masks = torch.zeros(1, classes, 32, 32, dtype=torch.bool)
    cell = patch // sub
    masks[0, 2, 3 * cell : 4 * cell, 5 * cell : 6 * cell] = True  # class 2, sub-cell row 3, column 5
    y, w = pool_targets(masks, torch.tensor([[20, 13]]), patch, sub)
    assert y.shape == (1, classes * sub * sub, 4, 4) and w.shape == (1, 4, 4)
    channel = 2 * sub * sub + (3 % sub) * sub + 5 % sub
    assert y[0, channel, 3 // sub, 5 // sub] == 1 and y.sum() == 1
    grid = DistortionReadout(4, classes, sub).layout(y)  # back to (1, classes, 8, 8) sub-cells
    assert torch.equal(grid[0, 2] > 0, masks[0, 2, ::cell, ::cell])
    # content 20 × 13 px: full patches up to row 16 / column 8, then 4/8 rows and 5/8 columns
    expected = torch.tensor([1.0, 1.0, 0.5, 0.0])[:, None] * torch.tensor([1.0, 5 / 8, 0.0, 0.0])[None, :]
    assert torch.allclose(w[0], expected)


def test_identity_and_transpose_move_the_content_window():
    t = torch.arange(2 * 6 * 6, dtype=torch.float32).view(2, 6, 6)
    assert torch.equal(dihedral(t, 4, 3, 0), torch.nn.functional.pad(t[:, :4, :3], (0, 3, 0, 2)))
    turned = dihedral(t, 4, 3, 4)
    assert torch.equal(turned[:, :3, :4], t[:, :4, :3].transpose(1, 2)) and turned[:, 3:].abs().sum() == 0
    assert turned[:, :, 4:].abs().sum() == 0


@pytest.mark.parametrize("k", range(8))
def test_symmetries_equal_reading_the_transformed_photo(k):
    """Every input channel (RGB and the native-resolution detail channels) and every mask of a symmetric view is what
    the processor reads from the photo transformed the same way, up to the 2 × 2 grids of the coarse channels."""
    rng = np.random.default_rng(k)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (19, 13, 3), dtype=np.uint8)).resize((96, 150)))
    grain = rng.normal(0, 12, smooth.shape) * (np.arange(96) > 40)[None, :, None]  # noise on the right side only
    photo = Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))
    mask = np.zeros((150, 96), bool)
    mask[10:70, 50:90] = True
    processor = QGroundProcessor(None, config_nano())
    pixels, meta = processor.preprocess_image(photo)
    h, w = meta.resized_size
    view = dihedral(pixels, h, w, k)
    want, want_meta = processor.preprocess_image(_transformed(photo, k))
    assert want_meta.resized_size == ((w, h) if k & 4 else (h, w))
    error = (view - want).abs().flatten(1).mean(1)  # per channel, over the whole input frame
    assert error.max() < 0.01, error
    assert (view[:3] - want[:3]).abs().max() < 0.05  # RGB: resizing commutes with them, up to 2 of 255 levels
    got = dihedral(processor.preprocess_mask(mask, meta), h, w, k)
    truth = processor.preprocess_mask(np.asarray(_transformed(Image.fromarray(mask), k)), want_meta)
    assert (got != truth).float().mean() < 0.01


def test_a_crop_moves_its_window_to_the_top_left_without_resampling():
    t = torch.arange(2 * 6 * 6, dtype=torch.float32).view(2, 6, 6)
    out = crop(t, 1, 2, 3, 4)
    assert torch.equal(out[:, :3, :4], t[:, 1:4, 2:6])
    assert not out[:, 3:].any() and not out[:, :, 4:].any()


def test_batch_targets_of_a_crop_follow_its_masks():
    """``batch_globals`` equals ``global_targets`` image by image; a crop that cuts a class's region out of the photo
    takes its presence away and scales its covered fraction to the crop."""
    size, patch = 32, 8
    masks = torch.zeros(2, len(CLASS_NAMES), size, size, dtype=torch.bool)
    masks[0, 0, :, :8] = True  # blur: the left quarter of image 0
    masks[1, 4, 8:24, 8:24] = True  # noise: the middle of image 1
    sizes = torch.tensor([[32, 32], [24, 32]])
    severity = {0: {"blur": 3}, 1: {"noise": 1}}
    y, w = pool_targets(masks, sizes, patch, READOUT_SUB)
    sev = torch.zeros(2, len(CLASS_NAMES))
    sev[0, 0], sev[1, 4] = 1.0, 1 / 3
    expected = torch.stack([global_targets(y[i], w[i], severity[i]) for i in range(2)])
    assert torch.allclose(batch_globals(y, w, sev), expected)
    n = len(CLASS_NAMES)
    cut = torch.stack([crop(masks[0], 0, 16, 32, 16), crop(masks[1], 8, 8, 16, 16)])
    y, w = pool_targets(cut, torch.tensor([[32, 16], [16, 16]]), patch, READOUT_SUB)
    got = batch_globals(y, w, sev)
    assert got[0, 0] == 0 and got[0, n] == 0  # blur cropped away
    assert got[1, 4] == 1 and torch.isclose(got[1, n + 4], torch.tensor(1.0))  # noise fills the crop


@pytest.mark.parametrize("crops", [-0.1, 1.5, float("nan")])
def test_the_share_of_crops_is_checked_before_any_work(crops, tmp_path):
    with pytest.raises(ValueError, match="between 0 and 1"):
        pretrain(None, None, tmp_path, epochs=1, batch=1, lr=1e-3, crops=crops)
