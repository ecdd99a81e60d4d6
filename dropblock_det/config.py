"""Config keys of dropblock_det, added to a Detectron2 ``CfgNode`` by :func:`add_dropblock_config`."""

from detectron2.config import CfgNode as CN

__all__ = ["add_dropblock_config", "validate_dropblock_config"]

_VALID_STAGES = ("res2", "res3", "res4", "res5")
_VALID_FPN_LEVELS = ("p2", "p3", "p4", "p5", "p6", "p7")
_VALID_PLACEMENTS = ("block", "stage")
_VALID_GAMMAS = ("paper", "exact")
_VALID_NORMALIZE = ("batch", "sample", "expected")


def add_dropblock_config(cfg):
    """Add the ``MODEL.DROPBLOCK`` keys (and the evaluation switch) to a Detectron2 config.

    Call it after ``get_cfg()`` and before ``merge_from_file``, as with any Detectron2 project.

    Args:
        cfg (CfgNode): a Detectron2 config, modified in place.
    """
    _C = cfg
    _C.MODEL.DROPBLOCK = CN()
    # Master switch. Off, the DropBlock backbone and meta-architecture build exactly stock
    # RetinaNet (same modules, same state_dict, bit-identical detections).
    _C.MODEL.DROPBLOCK.ENABLED = False
    # Target keep probability, reached at the end of the schedule ramp (paper: 0.9). In (0, 1].
    _C.MODEL.DROPBLOCK.KEEP_PROB = 0.9
    # Side of the square block of dropped units, one value for every feature map (paper: 7).
    # Clipped per axis to the feature map; even sizes are allowed.
    _C.MODEL.DROPBLOCK.BLOCK_SIZE = 7
    # Seed rate: "paper" uses the paper's formula (lands ~5% under the target drop rate because
    # blocks overlap); "exact" solves for the rate whose expected dropped fraction is 1 - keep_prob.
    _C.MODEL.DROPBLOCK.GAMMA = "exact"
    # True draws one mask per sample shared by all channels (cheaper, timm's default); False draws
    # one mask per channel, as in the paper's Algorithm 1.
    _C.MODEL.DROPBLOCK.SHARE_CHANNELS = False
    # Rescaling of the kept units: "batch" (count(mask)/count_ones(mask) over the whole batch, as in
    # the paper and the TF reference), "sample" (per sample) or "expected" (1 / keep_prob).
    _C.MODEL.DROPBLOCK.NORMALIZE = "batch"
    # ResNet stages that get DropBlock (the TF reference's groups 3 and 4 are res4 and res5).
    _C.MODEL.DROPBLOCK.STAGES = ["res4", "res5"]
    # "block": inside every bottleneck of STAGES, after the conv1 and conv2 activations, after
    # conv3's norm and on the shortcut branch before the addition (TF reference);
    # "stage": once on the output of each stage in STAGES.
    _C.MODEL.DROPBLOCK.PLACEMENT = "block"
    # FPN output levels (any of p2..p7 the FPN produces) that get DropBlock. The paper uses none.
    _C.MODEL.DROPBLOCK.FPN = []
    # DropBlock after each activation of the RetinaNet class and box subnets. The paper uses none.
    _C.MODEL.DROPBLOCK.HEAD = False
    # Per-stage drop rate of the TF reference: a stage d stages below the last of STAGES keeps
    # 1 - (1 - keep_prob) / 4**d (res4 gets a quarter of res5's drop rate). FPN and head levels
    # always use the unscaled keep_prob.
    _C.MODEL.DROPBLOCK.GROUP_SCALING = True

    _C.MODEL.DROPBLOCK.SCHEDULE = CN()
    # keep_prob at iteration 0 (paper: 1.0, i.e. DropBlock starts switched off).
    _C.MODEL.DROPBLOCK.SCHEDULE.START = 1.0
    # Fraction of SOLVER.MAX_ITER over which keep_prob falls linearly from START to KEEP_PROB,
    # then stays at KEEP_PROB. 1.0 ramps over the whole run, as in the paper; 0.0 is constant.
    _C.MODEL.DROPBLOCK.SCHEDULE.RAMP = 1.0

    # Evaluate COCO with faster-coco-eval's drop-in COCOeval when it is installed (same numbers,
    # many times faster than pycocotools' pure-Python COCOeval that the registry build falls back to).
    _C.TEST.FAST_COCO_EVAL = True

    # Optimizer of dropblock_det.engine.Trainer: "SGD" (Detectron2's) or "ADAMW" (the same
    # parameter groups; SOLVER.WEIGHT_DECAY is then AdamW's decoupled decay).
    _C.SOLVER.OPTIMIZER = "SGD"

    # The DropBlock paper's training augmentation (§4.3, tensorflow/tpu resize_and_crop): resize so
    # that the image fits in TARGET_SIZE * s, s uniform in [MIN_SCALE, MAX_SCALE], keeping the
    # aspect ratio, then random-crop / pad to TARGET_SIZE x TARGET_SIZE. Off: Detectron2's
    # ResizeShortestEdge from INPUT.MIN_SIZE_TRAIN / MAX_SIZE_TRAIN.
    _C.INPUT.SCALE_JITTER = CN()
    _C.INPUT.SCALE_JITTER.ENABLED = False
    _C.INPUT.SCALE_JITTER.MIN_SCALE = 0.8
    _C.INPUT.SCALE_JITTER.MAX_SCALE = 1.2
    _C.INPUT.SCALE_JITTER.TARGET_SIZE = 640


def _fail(key, value, expected):
    raise ValueError(f"cfg.{key} = {value!r} is invalid: {expected}.")


def validate_dropblock_config(cfg, fpn_levels=None):
    """Check every ``MODEL.DROPBLOCK`` value, raising before any training time is spent.

    Args:
        cfg (CfgNode): a config that went through :func:`add_dropblock_config`.
        fpn_levels (Iterable[str] or None): the FPN levels the model actually produces, to check
            ``MODEL.DROPBLOCK.FPN`` against; None checks against p2..p7.

    Raises:
        ValueError: naming the offending key, its value and what is expected.
    """
    if "DROPBLOCK" not in cfg.MODEL:
        raise ValueError(
            "cfg.MODEL.DROPBLOCK is missing: call dropblock_det.add_dropblock_config(cfg) before "
            "merge_from_file."
        )
    d = cfg.MODEL.DROPBLOCK
    kp = d.KEEP_PROB
    if isinstance(kp, bool) or not isinstance(kp, (int, float)) or not 0.0 < kp <= 1.0:
        _fail("MODEL.DROPBLOCK.KEEP_PROB", kp, "expected a number in (0, 1], e.g. 0.9")
    start = d.SCHEDULE.START
    if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0.0 < start <= 1.0:
        _fail("MODEL.DROPBLOCK.SCHEDULE.START", start, "expected a number in (0, 1], e.g. 1.0")
    ramp = d.SCHEDULE.RAMP
    if isinstance(ramp, bool) or not isinstance(ramp, (int, float)) or not 0.0 <= ramp <= 1.0:
        _fail("MODEL.DROPBLOCK.SCHEDULE.RAMP", ramp, "expected a fraction of the run in [0, 1]")
    bs = d.BLOCK_SIZE
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        _fail("MODEL.DROPBLOCK.BLOCK_SIZE", bs, "expected an integer >= 1, e.g. 7")
    if d.GAMMA not in _VALID_GAMMAS:
        _fail("MODEL.DROPBLOCK.GAMMA", d.GAMMA, f"expected one of {list(_VALID_GAMMAS)}")
    if d.NORMALIZE not in _VALID_NORMALIZE:
        _fail("MODEL.DROPBLOCK.NORMALIZE", d.NORMALIZE, f"expected one of {list(_VALID_NORMALIZE)}")
    if d.PLACEMENT not in _VALID_PLACEMENTS:
        _fail(
            "MODEL.DROPBLOCK.PLACEMENT", d.PLACEMENT, f"expected one of {list(_VALID_PLACEMENTS)}"
        )
    stages = list(d.STAGES)
    bad = [s for s in stages if s not in _VALID_STAGES]
    if bad or len(set(stages)) != len(stages):
        _fail(
            "MODEL.DROPBLOCK.STAGES", stages, f"expected distinct names among {list(_VALID_STAGES)}"
        )
    levels = tuple(fpn_levels) if fpn_levels is not None else _VALID_FPN_LEVELS
    fpn = list(d.FPN)
    bad = [lv for lv in fpn if lv not in levels]
    if bad or len(set(fpn)) != len(fpn):
        _fail("MODEL.DROPBLOCK.FPN", fpn, f"expected distinct levels among {list(levels)}")
    optimizer = cfg.SOLVER.get("OPTIMIZER", "SGD")
    if optimizer not in ("SGD", "ADAMW"):
        _fail("SOLVER.OPTIMIZER", optimizer, 'expected "SGD" or "ADAMW"')
    jitter = cfg.INPUT.get("SCALE_JITTER", None)
    if jitter is not None and jitter.ENABLED:
        if not 0 < jitter.MIN_SCALE <= jitter.MAX_SCALE:
            _fail(
                "INPUT.SCALE_JITTER.MIN_SCALE",
                jitter.MIN_SCALE,
                f"expected 0 < MIN_SCALE <= MAX_SCALE ({jitter.MAX_SCALE})",
            )
        if not (isinstance(jitter.TARGET_SIZE, int) and jitter.TARGET_SIZE > 0):
            _fail(
                "INPUT.SCALE_JITTER.TARGET_SIZE", jitter.TARGET_SIZE, "expected a positive integer"
            )
    for key in ("ENABLED", "SHARE_CHANNELS", "HEAD", "GROUP_SCALING"):
        if not isinstance(d[key], bool):
            _fail(f"MODEL.DROPBLOCK.{key}", d[key], "expected True or False")
