"""Pretraining on a cache: MLM, alignment prediction and contrastive MIM (see docs/training.md).

    from vlpipe.train import PretrainConfig, pretrain
    result = pretrain(PretrainConfig(cache="cache/cc", out="runs/tiny", steps=2000))
    result.val  # final validation metrics
"""

from vlpipe.train.config import PretrainConfig, load_config
from vlpipe.train.trainer import PretrainResult, StepInfo, pretrain

__all__ = ["PretrainConfig", "PretrainResult", "StepInfo", "load_config", "pretrain"]
