"""Pretraining on a cache (MLM, alignment prediction, contrastive MIM) and fine-tuning on a
labelled cache, both run by one training loop (see docs/training.md).

    from vlpipe.train import PretrainConfig, pretrain
    result = pretrain(PretrainConfig(cache="cache/cc", out="runs/tiny", steps=2000))
    result.val  # final validation metrics

    from vlpipe.train import FinetuneConfig, finetune
    result = finetune(FinetuneConfig(cache="cache/hm", out="runs/hm", init="runs/tiny", seeds=(0, 1, 2)))
    result.summary["mean"]["val"]  # mean over seeds (summary.json)
"""

from vlpipe.train.config import FinetuneConfig, PretrainConfig, load_config, load_finetune_config
from vlpipe.train.finetune import FinetuneResult, finetune
from vlpipe.train.loop import LoopResult, StepInfo
from vlpipe.train.pretrain import pretrain

__all__ = ["FinetuneConfig", "FinetuneResult", "LoopResult", "PretrainConfig", "StepInfo", "finetune",
           "load_config", "load_finetune_config", "pretrain"]
