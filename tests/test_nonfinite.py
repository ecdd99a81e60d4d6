"""Non-finite values: DropBlock never makes NaN, nor Inf where the rescaled value fits the dtype;
a non-finite loss stops training with Detectron2's error and leaves a usable checkpoint.

tests/test_drop_block.py covers the all-dropped batch (zeros, not NaN) and a
float16 factor above the dtype's range; this file adds every finite float16/bfloat16 value, both
mask layouts and every normalisation, the float32 extremes, the gradients, the exact overflow
edge, and the training-level behaviour.

"Representable" is judged against the float32 reference: the same mask and factor (a replay of
the same draw on float32 ones), the product taken in float32 and rounded once to the dtype.
"""

import math
import os

import pytest
import torch
from conftest import TINY_DROPBLOCK_CONFIG, TrainingRecorder, load_config
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from helpers import seeded_generator

from dropblock_det import drop_block_2d
from dropblock_det.tools.trainer import Trainer

NORMALIZE_MODES = ["batch", "sample", "expected"]
# The operator checks run on CPU, and on CUDA where a GPU is present (16-bit rescaling takes other
# code paths there: factors stay float32 tensors on the device).
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]


def _every_finite_value(dtype):
    """Every finite value of a 16-bit float dtype (both signs, zeros and subnormals)."""
    values = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    return values[torch.isfinite(values)]


def _drop_with_float32_reference(x, keep_prob, block_size, grad, **kwargs):
    """Run DropBlock on x (forward and backward) and on float32 ones with the same draw.

    Returns:
        tuple(Tensor, Tensor, Tensor): the output, x's gradient, and the float32 mask times factor.
    """
    x = x.clone().requires_grad_()
    out = drop_block_2d(x, keep_prob, block_size, generator=seeded_generator(0, x.device), **kwargs)
    out.backward(grad)
    # The draw depends on the shape and the generator only, not on the values or the dtype.
    ones = torch.ones(x.shape, device=x.device)
    factor = drop_block_2d(
        ones, keep_prob, block_size, generator=seeded_generator(0, x.device), **kwargs
    )
    return out.detach(), x.grad, factor


def _assert_no_nan_and_inf_only_past_the_range(result, source, factor):
    reference = (source.float() * factor).to(source.dtype)
    assert not torch.isnan(result).any()
    assert torch.equal(result[factor == 0], torch.zeros_like(result[factor == 0]))
    # Where the float32 product fits in the dtype, so does DropBlock's result.
    fits = torch.isfinite(reference)
    overflowed = source[fits & torch.isinf(result)]
    assert (
        overflowed.numel() == 0
    ), f"Inf from representable rescaled values {overflowed[:4].tolist()}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("share_channels", [False, True])
@pytest.mark.parametrize("normalize", NORMALIZE_MODES)
@pytest.mark.parametrize("keep_prob", [0.5, 0.85])
@pytest.mark.parametrize("device", DEVICES)
def test_every_finite_half_value_stays_finite_where_the_rescaled_value_fits(
    dtype, share_channels, normalize, keep_prob, device
):
    # Every finite value, one per unit (block 1: each unit dropped alone), in forward and (as the
    # upstream gradient) backward. 1 / 0.85 is a factor that both float16 and bfloat16 round up:
    # a factor cast to the dtype before the multiply overflows just below the edge.
    values = _every_finite_value(dtype)
    x = values.view(4, -1, 8, 8).to(
        device
    )  # 63488 float16 and 65280 bfloat16 values: multiples of 256
    out, grad, factor = _drop_with_float32_reference(
        x, keep_prob, 1, x, share_channels=share_channels, normalize=normalize
    )
    assert out.dtype == dtype and grad.dtype == dtype
    assert (factor == 0).any() and (factor != 0).any()
    _assert_no_nan_and_inf_only_past_the_range(out, x, factor)
    _assert_no_nan_and_inf_only_past_the_range(grad, x, factor)


@pytest.mark.parametrize("share_channels", [False, True])
@pytest.mark.parametrize("normalize", NORMALIZE_MODES)
@pytest.mark.parametrize("device", DEVICES)
def test_float32_extremes_never_become_nan(share_channels, normalize, device):
    info = torch.finfo(torch.float32)
    extremes = torch.tensor(
        [info.max, info.max / 2, info.tiny, info.tiny * 2**-23, 0.0, 1.0, 1e30, 1e-30]
    )
    # Blocks of 3 on 6x6 maps whose units take the extreme values of both signs, repeated.
    x = torch.cat([extremes, -extremes]).repeat(4 * 3 * 36 // 16 + 1)[: 4 * 3 * 36]
    x = x.view(4, 3, 6, 6).to(device)
    out, grad, factor = _drop_with_float32_reference(
        x, 0.7, 3, x, share_channels=share_channels, normalize=normalize
    )
    assert (factor == 0).any()
    for result in (out, grad):
        assert not torch.isnan(result).any()
        assert torch.equal(result[factor == 0], torch.zeros_like(result[factor == 0]))
        # Only values whose product leaves float32's range become Inf.
        inf = torch.isinf(result)
        assert torch.equal(inf, torch.isinf(x * factor))
        assert torch.equal(inf, (x.double() * factor.double()).abs() > info.max)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("share_channels", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_overflow_edge_is_max_over_the_factor(dtype, share_channels, device):
    """The documented edge: with factor s, values up to max / s stay finite, larger ones are Inf.

    keep_prob 0.5 with normalize="expected" gives s = 2 exactly, so max / 2 is representable and
    the edge is sharp: max / 2 gives max, the next value up gives Inf.
    """
    largest = torch.finfo(dtype).max
    below = torch.tensor(largest / 2, dtype=dtype)
    above = torch.nextafter(below, torch.tensor(math.inf, dtype=dtype))
    assert float(below) == largest / 2 and float(above) > largest / 2
    x = torch.stack([below, above, -below, -above]).repeat(64).view(256, 1, 1, 1).to(device)
    out = drop_block_2d(
        x, 0.5, 1, normalize="expected", share_channels=share_channels,
        generator=seeded_generator(0, device),
    )  # fmt: skip
    kept = out != 0
    assert kept.any() and (~kept).any()
    expected = torch.stack([torch.tensor(largest), torch.tensor(math.inf)]).to(dtype)
    expected = torch.cat([expected, -expected]).repeat(64).view(256, 1, 1, 1).to(device)
    assert torch.equal(out[kept], expected[kept])


def _nan_loss_cfg(output_dir):
    return load_config(
        TINY_DROPBLOCK_CONFIG,
        [
            "SOLVER.IMS_PER_BATCH", 2,
            "INPUT.MIN_SIZE_TRAIN", (96,),
            "INPUT.MAX_SIZE_TRAIN", 96,
            "DATASETS.TEST", (),
            "SOLVER.MAX_ITER", 6,
            "SOLVER.CHECKPOINT_PERIOD", 2,
            "OUTPUT_DIR", str(output_dir),
        ],
    )  # fmt: skip


@pytest.mark.slow
def test_non_finite_loss_stops_training_and_keeps_the_last_checkpoint_usable(tmp_path):
    nan_at = 4  # checkpoints are written after steps 1 and 3
    cfg = _nan_loss_cfg(tmp_path)
    with torch.random.fork_rng(devices=[]):  # leave the test process's RNG as it was
        torch.manual_seed(cfg.SEED)
        trainer = Trainer(cfg)
        trainer.register_hooks([TrainingRecorder(cfg.OUTPUT_DIR, nan_loss_at_iter=nan_at)])
        trainer.resume_or_load(resume=False)
        with pytest.raises(
            FloatingPointError, match=f"Loss became infinite or NaN at iteration={nan_at}"
        ):
            trainer.train()

    # The failed step wrote nothing: the last checkpoint is step 3's, and no model_final.
    assert not os.path.exists(tmp_path / "model_final.pth")
    with open(tmp_path / "last_checkpoint") as f:
        last = f.read().strip()
    assert last == f"model_{nan_at - 1:07d}.pth"
    model = build_model(cfg)
    checkpoint = DetectionCheckpointer(model).load(str(tmp_path / last))
    assert checkpoint["iteration"] == nan_at - 1 < nan_at
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(b).all() for b in model.buffers() if b.is_floating_point())

    # Usable: training resumes from it (optimizer and scheduler state included) to the end.
    with torch.random.fork_rng(devices=[]):
        resumed = Trainer(cfg)
        resumed.register_hooks([TrainingRecorder(cfg.OUTPUT_DIR)])
        resumed.resume_or_load(resume=True)
        assert resumed.start_iter == nan_at
        resumed.train()
    assert os.path.exists(tmp_path / "model_final.pth")
    assert math.isfinite(resumed.storage.history("total_loss").latest())
