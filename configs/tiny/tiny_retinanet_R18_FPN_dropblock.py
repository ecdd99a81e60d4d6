# LazyConfig twin of tiny_retinanet_R18_FPN_dropblock.yaml (same model, data and schedule; see
# that file and Base-Tiny.yaml for the reasons behind each value). Train it with
#   python tools/lazyconfig_train_net.py --config-file configs/tiny/tiny_retinanet_R18_FPN_dropblock.py
# Expected: no reference number; the demo reports baseline vs DropBlock side by side.
from .tiny_retinanet_R18_FPN_baseline import (
    dataloader,
    dropblock,
    lr_multiplier,
    model,
    optimizer,
    train,
)

dropblock.update(
    ENABLED=True, KEEP_PROB=0.9, BLOCK_SIZE=3, STAGES=["res4", "res5"], PLACEMENT="block"
)

__all__ = ["dataloader", "dropblock", "lr_multiplier", "model", "optimizer", "train"]
