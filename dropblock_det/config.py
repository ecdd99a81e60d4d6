"""The ``MODEL.DROPBLOCK`` config keys, and the one check of their values."""

from detectron2.config import CfgNode as CN
from detectron2.config import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from .layers import BACKENDS, GAMMA_MODES, NORMALIZE_MODES

__all__ = [
    "FPN_LEVELS",
    "PLACEMENTS",
    "HEAD_GROUP",
    "RESNET_STAGES",
    "ROI_BOX_GROUP",
    "ROI_MASK_GROUP",
    "add_dropblock_config",
    "dropblock_settings",
    "dropblock_settings_of",
    "fail",
    "requested_groups",
    "validate_dropblock_config",
    "validate_dropblock_settings",
]

# Names MODEL.DROPBLOCK.STAGES / FPN may hold (Detectron2's ResNet stages and FPN levels).
RESNET_STAGES = ("res2", "res3", "res4", "res5")
FPN_LEVELS = ("p2", "p3", "p4", "p5", "p6", "p7")
PLACEMENTS = ("block", "stage")
# Groups of the head DropBlocks (always the unscaled keep_prob).
HEAD_GROUP = "head"
ROI_BOX_GROUP = "roi_box"
ROI_MASK_GROUP = "roi_mask"


def add_dropblock_config(cfg):
    """Add the ``MODEL.DROPBLOCK`` keys to a Detectron2 config (and nothing else).

    Call it after ``get_cfg()`` and before ``merge_from_file``, as with any Detectron2 project.

    Args:
        cfg (CfgNode): a Detectron2 config, modified in place.
    """
    _C = cfg
    _C.MODEL.DROPBLOCK = CN()
    # Master switch. Off, the DropBlock builders build exactly the stock Detectron2 model (same
    # modules, same state_dict, bit-identical detections).
    _C.MODEL.DROPBLOCK.ENABLED = False
    # Target keep probability, reached at the end of the schedule ramp (paper: 0.9). In (0, 1].
    _C.MODEL.DROPBLOCK.KEEP_PROB = 0.9
    # Side of the square block of dropped units, one value for every feature map (paper: 7).
    # Clipped per axis to the feature map; even sizes are allowed.
    _C.MODEL.DROPBLOCK.BLOCK_SIZE = 7
    # Seed rate: "exact" solves for the rate whose expected dropped fraction is 1 - keep_prob;
    # "paper" is the paper's formula, which lands ~5% under it because blocks overlap. The
    # operator's own default is "paper" (a drop-in for the peers); a detector run asks for the
    # rate it names.
    _C.MODEL.DROPBLOCK.GAMMA = "exact"
    # True draws one mask per sample shared by all channels (cheaper, timm's default); False draws
    # one mask per channel, as in the paper's Algorithm 1.
    _C.MODEL.DROPBLOCK.SHARE_CHANNELS = False
    # Rescaling of the kept units: "batch" (count(mask)/count_ones(mask) over the whole batch, as in
    # the paper and the TF reference), "sample" (per sample) or "expected" (1 / keep_prob).
    _C.MODEL.DROPBLOCK.NORMALIZE = "batch"
    # Implementation: "auto" (the fastest measured on the tensor's device: "sparse" on CPU),
    # "sparse", "dense" or "triton" (fused GPU kernels). Same semantics; each draws its own masks.
    _C.MODEL.DROPBLOCK.BACKEND = "auto"
    # ResNet stages that get DropBlock (the TF reference's groups 3 and 4 are res4 and res5).
    _C.MODEL.DROPBLOCK.STAGES = ["res4", "res5"]
    # "block": inside every residual block of STAGES, after the conv1 and conv2 activations, after
    # conv3's norm and on the shortcut branch before the addition (TF reference);
    # "stage": once on the output of each stage in STAGES.
    _C.MODEL.DROPBLOCK.PLACEMENT = "block"
    # FPN output levels (any of p2..p7 the FPN produces) that get DropBlock. The paper uses none.
    _C.MODEL.DROPBLOCK.FPN = []
    # DropBlock after each activation of the RetinaNet class and box subnets. The paper uses none.
    _C.MODEL.DROPBLOCK.HEAD = False
    # R-CNN: DropBlock on the pooled RoI features the box head receives and after each mask-head
    # conv (needs MODEL.ROI_BOX_HEAD.NAME "DropBlockFastRCNNConvFCHead" and, for masks,
    # MODEL.ROI_MASK_HEAD.NAME "DropBlockMaskRCNNConvUpsampleHead"). The paper uses none.
    _C.MODEL.DROPBLOCK.ROI_HEADS = False
    # Per-stage drop rate of the TF reference: a stage d stages below the last of STAGES keeps
    # 1 - (1 - keep_prob) / 4**d (res4 gets a quarter of res5's drop rate). FPN and head levels
    # always use the unscaled keep_prob.
    _C.MODEL.DROPBLOCK.GROUP_SCALING = True

    _C.MODEL.DROPBLOCK.SCHEDULE = CN()
    # keep_prob at iteration 0 (paper: 1.0, i.e. DropBlock starts switched off).
    _C.MODEL.DROPBLOCK.SCHEDULE.START = 1.0
    # Fraction of the run over which keep_prob falls linearly from START (iteration 0) to
    # KEEP_PROB (iteration RAMP * (SOLVER.MAX_ITER - 1)), then stays at KEEP_PROB. The last
    # training step always runs at KEEP_PROB, as the paper's schedule ends at its target; a run of
    # one iteration runs it at KEEP_PROB. 1.0 ramps over the whole run, as in the paper; 0.0 is
    # constant.
    _C.MODEL.DROPBLOCK.SCHEDULE.RAMP = 1.0


def fail(key, value, expected):
    """Raise the ValueError of an invalid config value, in the one format every check uses.

    Args:
        key (str): the full key, e.g. "MODEL.DROPBLOCK.KEEP_PROB".
        value: its value.
        expected (str): what is expected instead.

    Raises:
        ValueError: ``cfg.<key> = <value> is invalid: <expected>.``
    """
    raise ValueError(f"cfg.{key} = {value!r} is invalid: {expected}.")


def _is_number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _check_names(key, names, valid):
    names = list(names)
    if any(n not in valid for n in names) or len(set(names)) != len(names):
        fail(key, names, f"expected distinct names among {list(valid)}")


def dropblock_settings(**values):
    """The ``MODEL.DROPBLOCK`` node on its own: defaults, then ``values``, checked.

    What a LazyConfig holds in place of ``cfg.MODEL.DROPBLOCK``, e.g.
    ``dropblock = L(dropblock_settings)(ENABLED=True, BLOCK_SIZE=3)``; the model builders and the
    schedule hook take either.

    Args:
        **values: keys of ``MODEL.DROPBLOCK`` (``SCHEDULE`` as a dict of its keys).

    Returns:
        CfgNode: the node.

    Raises:
        KeyError: for a key ``MODEL.DROPBLOCK`` does not have.
        ValueError: for an invalid value, naming the key.
    """
    cfg = CN({"MODEL": CN()})
    add_dropblock_config(cfg)
    settings = cfg.MODEL.DROPBLOCK
    # A LazyConfig passes omegaconf containers; CfgNode takes plain lists and dicts.
    values = {
        k: OmegaConf.to_container(v) if isinstance(v, (DictConfig, ListConfig)) else v
        for k, v in values.items()
    }
    settings.merge_from_other_cfg(CN(values))
    validate_dropblock_settings(settings)
    return settings


def validate_dropblock_config(cfg):
    """Check every ``MODEL.DROPBLOCK`` value, raising before any training time is spent.

    Args:
        cfg (CfgNode): a config that went through :func:`add_dropblock_config`.

    Raises:
        ValueError: naming the offending key, its value and what is expected.
    """
    if "DROPBLOCK" not in cfg.MODEL:
        raise ValueError(
            "cfg.MODEL.DROPBLOCK is missing: call dropblock_det.add_dropblock_config(cfg) before "
            "merge_from_file."
        )
    validate_dropblock_settings(cfg.MODEL.DROPBLOCK)


def validate_dropblock_settings(settings):
    """Check a ``MODEL.DROPBLOCK`` node (from a yaml config or a LazyConfig): every value check.

    The model builders and the schedule hook trust their settings; the entry points call this (or
    :func:`validate_dropblock_config`) once, and :func:`dropblock_settings` calls it on the node it
    makes.

    Args:
        settings (CfgNode or Mapping): ``cfg.MODEL.DROPBLOCK`` or :func:`dropblock_settings`.

    Raises:
        ValueError: naming the offending key, its value and what is expected.
    """
    d = CN(OmegaConf.to_container(settings) if isinstance(settings, DictConfig) else settings)
    for key in ("ENABLED", "SHARE_CHANNELS", "HEAD", "ROI_HEADS", "GROUP_SCALING"):
        if not isinstance(d[key], bool):
            fail(f"MODEL.DROPBLOCK.{key}", d[key], "expected True or False")
    if not (_is_number(d.KEEP_PROB) and 0.0 < d.KEEP_PROB <= 1.0):
        fail("MODEL.DROPBLOCK.KEEP_PROB", d.KEEP_PROB, "expected a number in (0, 1], e.g. 0.9")
    start = d.SCHEDULE.START
    if not (_is_number(start) and 0.0 < start <= 1.0):
        fail("MODEL.DROPBLOCK.SCHEDULE.START", start, "expected a number in (0, 1], e.g. 1.0")
    ramp = d.SCHEDULE.RAMP
    if not (_is_number(ramp) and 0.0 <= ramp <= 1.0):
        fail("MODEL.DROPBLOCK.SCHEDULE.RAMP", ramp, "expected a fraction of the run in [0, 1]")
    bs = d.BLOCK_SIZE
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        fail("MODEL.DROPBLOCK.BLOCK_SIZE", bs, "expected an integer >= 1, e.g. 7")
    for key, valid in (
        ("GAMMA", GAMMA_MODES),
        ("NORMALIZE", NORMALIZE_MODES),
        ("BACKEND", BACKENDS),
        ("PLACEMENT", PLACEMENTS),
    ):
        if d[key] not in valid:
            fail(f"MODEL.DROPBLOCK.{key}", d[key], f"expected one of {list(valid)}")
    _check_names("MODEL.DROPBLOCK.STAGES", d.STAGES, RESNET_STAGES)
    _check_names("MODEL.DROPBLOCK.FPN", d.FPN, FPN_LEVELS)
    if d.ENABLED and not (d.STAGES or d.FPN or d.HEAD or d.ROI_HEADS):
        raise ValueError(
            "cfg.MODEL.DROPBLOCK.ENABLED is True but the config asks for DropBlock nowhere: choose "
            f"some of MODEL.DROPBLOCK.STAGES (now {list(d.STAGES)}), FPN (now {list(d.FPN)}), "
            f"HEAD (now {d.HEAD}) or ROI_HEADS (now {d.ROI_HEADS})."
        )


def dropblock_settings_of(cfg):
    """The DropBlock settings of a yaml config, of a LazyConfig root, or the node itself.

    Args:
        cfg (CfgNode or DictConfig): a yaml config with ``MODEL.DROPBLOCK``, a LazyConfig root
            (its ``dropblock`` node, made by :func:`dropblock_settings`, is instantiated), or the
            settings node.

    Returns:
        CfgNode or None: the ``MODEL.DROPBLOCK`` node; None for a LazyConfig without a
        ``dropblock`` node (a baseline).
    """
    if "MODEL" in cfg:
        return cfg.MODEL.DROPBLOCK
    if "ENABLED" in cfg:
        return cfg
    node = cfg.get("dropblock")
    return None if node is None else instantiate(node)


def requested_groups(cfg, *, backbone_only: bool = False) -> dict[str, str]:
    """The DropBlock groups the config asks for, each with the key that asks for it.

    The one answer to "which groups does this config ask for": the model check, the schedule's
    summary, the search space and the report all use it.

    Args:
        cfg (CfgNode or DictConfig): a yaml config or a LazyConfig root (see
            :func:`dropblock_settings_of`); for a LazyConfig, masks count when its model has a
            ``roi_heads.mask_head``.
        backbone_only (bool): only the backbone's groups (STAGES and FPN).

    Returns:
        dict[str, str]: group name to config key; empty with ENABLED off or no settings.
    """
    d = dropblock_settings_of(cfg)
    if d is None or not d.ENABLED:
        return {}
    groups = {stage: "MODEL.DROPBLOCK.STAGES" for stage in d.STAGES}
    groups.update({level: "MODEL.DROPBLOCK.FPN" for level in d.FPN})
    if not backbone_only:
        if d.HEAD:
            groups[HEAD_GROUP] = "MODEL.DROPBLOCK.HEAD"
        if d.ROI_HEADS:
            groups[ROI_BOX_GROUP] = "MODEL.DROPBLOCK.ROI_HEADS"
            if _mask_on(cfg):
                groups[ROI_MASK_GROUP] = "MODEL.DROPBLOCK.ROI_HEADS"
    return groups


def _mask_on(cfg) -> bool:
    if "MODEL" in cfg:
        return bool(cfg.MODEL.MASK_ON)
    roi_heads = cfg.get("model", {}).get("roi_heads") if "model" in cfg else None
    return roi_heads is not None and roi_heads.get("mask_head") is not None
