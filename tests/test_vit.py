"""The image stream: fused normalisation, patch layout, position-embedding resampling, patch mask."""

from __future__ import annotations

import torch

from vlpipe.model import build_model
from vlpipe.model.vit import resample_pos_embed

torch.set_num_threads(2)


def vit(**vision):
    torch.manual_seed(0)
    return build_model("tiny", {"vision.image_size": 32, "vision.patch_size": 8, "vision.pixel_mean": (0.5, 0.4, 0.3),
                                "vision.pixel_std": (0.2, 0.25, 0.3), **{f"vision.{k}": v for k, v in vision.items()}}
                       ).vision.eval()


def test_fused_normalisation_equals_normalise_then_linear():
    model = vit()
    patches = torch.randint(0, 256, (2, 16, 192), dtype=torch.uint8)
    mean = torch.tensor([0.5, 0.4, 0.3]).repeat(64)
    std = torch.tensor([0.2, 0.25, 0.3]).repeat(64)
    explicit = model.patch_embed.proj((patches.float() / 255 - mean) / std)
    torch.testing.assert_close(model.patch_embed(patches), explicit, atol=1e-5, rtol=1e-5)
    # The statistics live in the config, not in the weights: not saved, but rebuilt from it.
    assert "patch_embed.pixel_mean" not in model.state_dict()


def test_pixel_statistics_change_the_output():
    patches = torch.randint(0, 256, (1, 16, 192), dtype=torch.uint8)
    a = vit()(patches)
    torch.manual_seed(0)
    b = build_model("tiny", {"vision.image_size": 32, "vision.patch_size": 8}).vision.eval()(patches)
    assert not torch.allclose(a, b)


def test_patch_order_is_row_major_and_pixels_row_col_channel():
    # A conv over the image equals our Linear over the cache's patches (independent layout check).
    model = vit()
    img = torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8)
    patches = img.reshape(1, 4, 8, 4, 8, 3).permute(0, 1, 3, 2, 4, 5).reshape(1, 16, 192)
    w = model.patch_embed.proj.weight.reshape(-1, 8, 8, 3).permute(0, 3, 1, 2)  # (D, 3, 8, 8)
    x = (img.permute(0, 3, 1, 2).float() / 255 - torch.tensor([0.5, 0.4, 0.3])[:, None, None]) \
        / torch.tensor([0.2, 0.25, 0.3])[:, None, None]
    conv = torch.nn.functional.conv2d(x, w, model.patch_embed.proj.bias, stride=8).flatten(2).transpose(1, 2)
    torch.testing.assert_close(model.patch_embed(patches), conv, atol=1e-4, rtol=1e-4)


def test_resample_pos_embed():
    pos = torch.randn(1, 1 + 16, 8)
    assert resample_pos_embed(pos, 4) is pos
    up = resample_pos_embed(pos, 8)
    assert up.shape == (1, 65, 8)
    torch.testing.assert_close(up[:, 0], pos[:, 0])
    const = torch.ones(1, 17, 8)  # a constant field stays constant under interpolation
    torch.testing.assert_close(resample_pos_embed(const, 6), torch.ones(1, 37, 8))


def test_other_image_size_runs_with_interpolated_positions():
    model = vit()
    out = model(torch.randint(0, 256, (2, 36, 192), dtype=torch.uint8))  # 48 px: 6 x 6 grid
    assert out.shape == (2, 37, model.cfg.hidden)


def test_patch_mask_uses_the_mask_token():
    model = vit()
    patches = torch.randint(0, 256, (2, 16, 192), dtype=torch.uint8)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 3] = True
    x = model.embed(patches, mask)
    expected = model.mask_token[0, 0] + model.pos_embed[0, 4]
    torch.testing.assert_close(x[0, 4], expected)
    torch.testing.assert_close(x[1], model.embed(patches)[1])


def test_gradients_reach_every_parameter():
    model = vit().train()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 0] = True
    model(torch.randint(0, 256, (2, 16, 192), dtype=torch.uint8), mask).square().mean().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []
