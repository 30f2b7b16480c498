"""The video U-Net factorised in space and time (unnoise.models.video_unet): with its temporal
attention masked it is exactly the per-frame image model, and unmasked it mixes frames."""

import dataclasses

import pytest
import torch

from unnoise.conditioning import Condition
from unnoise.models import build_model
from unnoise.models.video_unet import VideoUNet, video_unet_tiny

F64 = torch.float64


def _random_net(config) -> VideoUNet:
    torch.manual_seed(0)
    net = build_model(config).double()
    for p in net.parameters():  # zero-initialised output layers would hide every difference
        p.data.normal_(0, 0.2)
    return net


def test_masked_temporal_attention_is_the_per_frame_image_model():
    """A row of independent frames (cond.independent) gives, frame by frame, what the same weights
    give on one-frame videos (T = 1: the relative-position table's centre entry is the only one
    used); a row of a clip does not (its frames see each other)."""
    config = video_unet_tiny()
    net = _random_net(dataclasses.replace(config, num_classes=3))
    single = build_model(dataclasses.replace(config, num_classes=3, frames=1)).double()
    state = net.state_dict()
    centre = config.frames - 1  # the bias of i - j = 0
    single.load_state_dict({k: v[:, centre:centre + 1] if k.endswith(".bias") and "temporal" in k and v.ndim == 2
                            else v for k, v in state.items()})
    x = torch.randn(2, 1, config.frames, 8, 8, dtype=F64)
    t = torch.tensor([0.3, 0.7], dtype=F64)
    labels = torch.tensor([1, 3])
    out = net(x, t, Condition(labels=labels, independent=torch.tensor([True, False])))
    frames = torch.cat([single(x[:, :, k:k + 1], t, Condition(labels=labels)) for k in range(config.frames)], 2)
    assert out.abs().max() > 0.1
    assert (out[0] - frames[0]).abs().max() < 1e-10
    assert (out[1] - frames[1]).abs().max() > 1e-3


def test_frames_of_a_clip_see_each_other_and_independent_ones_do_not():
    """Changing frame 0 changes the output at the last frame of a clip, not of independent frames."""
    net = _random_net(video_unet_tiny())
    x = torch.randn(2, 1, 4, 8, 8, dtype=F64)
    moved = x.clone()
    moved[:, :, 0] += 1
    t = torch.tensor([0.5, 0.5], dtype=F64)
    cond = Condition(independent=torch.tensor([False, True]))
    change = (net(moved, t, cond) - net(x, t, cond))[:, :, -1].abs().amax((1, 2, 3))
    assert change[0] > 1e-6 and change[1] < 1e-12  # rounding (1e-16) apart from a real dependence


def test_video_unet_refuses_bad_shapes_and_masks():
    net = build_model(video_unet_tiny())
    with pytest.raises(ValueError, match="videos of shape"):
        net(torch.randn(2, 1, 3, 8, 8), torch.rand(2))
    with pytest.raises(ValueError, match="independent"):
        net(torch.randn(2, 1, 4, 8, 8), torch.rand(2), Condition(independent=torch.tensor([1, 0])))
