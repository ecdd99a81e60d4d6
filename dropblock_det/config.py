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
    """Add the ``MODEL.DROPBLOCK`` keys to a Detectron2 config, before ``merge_from_file``.

    Args:
        cfg (CfgNode): a Detectron2 config, modified in place.
    """
    _C = cfg
    _C.MODEL.DROPBLOCK = CN()
    # Master switch; off, the DropBlock builders build exactly the stock Detectron2 model.
    _C.MODEL.DROPBLOCK.ENABLED = False
    # Target keep probability, reached at the end of the schedule (paper: 0.9). In (0, 1].
    _C.MODEL.DROPBLOCK.KEEP_PROB = 0.9
    # Side of the square dropped block (paper: 7), clipped per axis to the map; even sizes allowed.
    _C.MODEL.DROPBLOCK.BLOCK_SIZE = 7
    # Seed rate: "exact" drops 1 - keep_prob in expectation; "paper" (the operator's default, a
    # drop-in for the peers) drops ~5% less because blocks overlap.
    _C.MODEL.DROPBLOCK.GAMMA = "exact"
    # True: one mask per sample shared by all channels (timm's default); False: one per channel
    # (the paper's Algorithm 1).
    _C.MODEL.DROPBLOCK.SHARE_CHANNELS = False
    # Rescaling of the kept units: "batch" (count / count_ones over the batch, paper and TF
    # reference), "sample" (per sample) or "expected" (1 / keep_prob).
    _C.MODEL.DROPBLOCK.NORMALIZE = "batch"
    # "auto" (the fastest measured for the device), "sparse", "dense" or "triton" (GPU).
    _C.MODEL.DROPBLOCK.BACKEND = "auto"
    # ResNet stages that get DropBlock (the TF reference's groups 3 and 4 are res4 and res5).
    _C.MODEL.DROPBLOCK.STAGES = ["res4", "res5"]
    # "block": in every block of STAGES, after conv1's and conv2's activations, after conv3's norm
    # and on the shortcut (TF reference); "stage": once on each stage's output.
    _C.MODEL.DROPBLOCK.PLACEMENT = "block"
    # FPN output levels (p2..p7) that get DropBlock. The paper uses none.
    _C.MODEL.DROPBLOCK.FPN = []
    # After each activation of the RetinaNet class and box subnets. The paper uses none.
    _C.MODEL.DROPBLOCK.HEAD = False
    # R-CNN: on the box head's pooled RoI features and after each mask-head conv (needs
    # MODEL.ROI_BOX_HEAD.NAME "DropBlockFastRCNNConvFCHead", for masks MODEL.ROI_MASK_HEAD.NAME
    # "DropBlockMaskRCNNConvUpsampleHead"). The paper uses none.
    _C.MODEL.DROPBLOCK.ROI_HEADS = False
    # TF reference: a stage d stages below the last of STAGES keeps 1 - (1 - keep_prob) / 4**d.
    # FPN and head levels use keep_prob as is.
    _C.MODEL.DROPBLOCK.GROUP_SCALING = True

    _C.MODEL.DROPBLOCK.SCHEDULE = CN()
    # keep_prob at iteration 0 (paper: 1.0, DropBlock off).
    _C.MODEL.DROPBLOCK.SCHEDULE.START = 1.0
    # Fraction of the run over which keep_prob falls linearly from START to KEEP_PROB (reached at
    # iteration RAMP * (MAX_ITER - 1), so the last step runs at KEEP_PROB): 1.0 as in the paper,
    # 0.0 constant.
    _C.MODEL.DROPBLOCK.SCHEDULE.RAMP = 1.0


def fail(key, value, expected):
    """Raise ``ValueError("cfg.<key> = <value> is invalid: <expected>.")``, every check's format.

    Args:
        key (str): the full key, e.g. "MODEL.DROPBLOCK.KEEP_PROB".
        value: its value.
        expected (str): what is expected instead.

    Raises:
        ValueError: always.
    """
    raise ValueError(f"cfg.{key} = {value!r} is invalid: {expected}.")


def _is_number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float))


def dropblock_settings(**values):
    """The ``MODEL.DROPBLOCK`` node on its own: defaults, then ``values``, checked.

    A LazyConfig's ``dropblock = L(dropblock_settings)(ENABLED=True, BLOCK_SIZE=3)``.

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
    """:func:`validate_dropblock_settings` on a yaml config's ``MODEL.DROPBLOCK``.

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
    """Every value check of a ``MODEL.DROPBLOCK`` node; the builders and the hook trust it.

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
    start, ramp = d.SCHEDULE.START, d.SCHEDULE.RAMP
    if not (_is_number(start) and 0.0 < start <= 1.0):
        fail("MODEL.DROPBLOCK.SCHEDULE.START", start, "expected a number in (0, 1], e.g. 1.0")
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
    for key, valid in (("STAGES", RESNET_STAGES), ("FPN", FPN_LEVELS)):
        names = list(d[key])
        if any(n not in valid for n in names) or len(set(names)) != len(names):
            fail(f"MODEL.DROPBLOCK.{key}", names, f"expected distinct names among {list(valid)}")
    if d.ENABLED and not (d.STAGES or d.FPN or d.HEAD or d.ROI_HEADS):
        raise ValueError(
            "cfg.MODEL.DROPBLOCK.ENABLED is True but the config asks for DropBlock nowhere: choose "
            f"some of MODEL.DROPBLOCK.STAGES (now {list(d.STAGES)}), FPN (now {list(d.FPN)}), "
            f"HEAD (now {d.HEAD}) or ROI_HEADS (now {d.ROI_HEADS})."
        )


def dropblock_settings_of(cfg):
    """The DropBlock settings of a yaml config, of a LazyConfig root, or the node itself.

    Args:
        cfg (CfgNode or DictConfig): a yaml config, a LazyConfig root (its ``dropblock`` node is
            instantiated) or the settings node.

    Returns:
        CfgNode or None: the settings; None for a LazyConfig without a ``dropblock`` node.
    """
    if "MODEL" in cfg:
        return cfg.MODEL.DROPBLOCK
    if "ENABLED" in cfg:
        return cfg
    node = cfg.get("dropblock")
    return None if node is None else instantiate(node)


def requested_groups(cfg, *, backbone_only: bool = False) -> dict[str, str]:
    """The DropBlock groups the config asks for, each with the key that asks for it.

    The one answer used by the builders, the model check, the search space and the report.

    Args:
        cfg (CfgNode or DictConfig): as for :func:`dropblock_settings_of`; in a LazyConfig, masks
            count when its model has a ``roi_heads.mask_head``.
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
            if "MODEL" in cfg:
                mask_on = cfg.MODEL.MASK_ON
            else:
                roi_heads = cfg.get("model", {}).get("roi_heads") if "model" in cfg else None
                mask_on = roi_heads is not None and roi_heads.get("mask_head") is not None
            if mask_on:
                groups[ROI_MASK_GROUP] = "MODEL.DROPBLOCK.ROI_HEADS"
    return groups
