"""The heads: one fusion for both pair heads, and state-dict names that saved checkpoints still match."""

from __future__ import annotations

import hashlib

import pytest
import torch

from vlpipe.errors import VlpipeError
from vlpipe.model import build_model
from vlpipe.model.config import FUSIONS
from vlpipe.model.heads import AlignHead, Fusion
from vlpipe.train.classifier import ClassifierHead

torch.set_num_threads(2)


def wide(align: str):
    """tiny with a wider image stream (96) than text stream (64): the product fusion needs its projection."""
    torch.manual_seed(0)
    return build_model("tiny", {"heads.align": align, "vision.hidden": 96, "vision.heads": 2}).eval()


def names_and_shapes(module: torch.nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items() if k.startswith(prefix)}


def test_alignment_head_keeps_its_state_dict_names():
    assert names_and_shapes(wide("product"), "align_head.") == {
        "align_head.image_proj.weight": (64, 96), "align_head.image_proj.bias": (64,),
        "align_head.classifier.0.weight": (1, 64), "align_head.classifier.0.bias": (1,)}
    assert names_and_shapes(wide("concat"), "align_head.") == {
        "align_head.classifier.0.weight": (64, 160), "align_head.classifier.0.bias": (64,),
        "align_head.classifier.2.weight": (1, 64), "align_head.classifier.2.bias": (1,)}


@pytest.mark.parametrize(("align", "digest"), [("product", "f11229e32cc56d16"), ("concat", "2685b3a7c010a2ce")])
def test_whole_state_dict_is_named_as_before_the_heads_moved(align, digest):
    # sha256 of the sorted "name shape" lines of this model's state dict as built by the code before
    # the heads moved to heads.py (commit 5b5755f): a checkpoint saved then loads strictly now.
    lines = "\n".join(f"{k} {shape}" for k, shape in sorted(names_and_shapes(wide(align)).items()))
    assert hashlib.sha256(lines.encode()).hexdigest()[:16] == digest


def test_classifier_head_keeps_its_state_dict_names():
    head = ClassifierHead(64, 96, 5, "product", 0.1)
    assert names_and_shapes(head) == {
        "image_proj.weight": (64, 96), "image_proj.bias": (64,), "mlp.1.weight": (128, 64), "mlp.1.bias": (128,),
        "mlp.3.weight": (128,), "mlp.3.bias": (128,), "mlp.5.weight": (5, 128), "mlp.5.bias": (5,)}
    assert names_and_shapes(ClassifierHead(64, 96, 5, "concat", 0.1))["mlp.1.weight"] == (128, 160)


def test_fusion_product_and_concat():
    torch.manual_seed(0)
    t, i = torch.randn(3, 64), torch.randn(3, 96)
    product = Fusion(64, 96, "product")
    assert product.out_dim == 64
    torch.testing.assert_close(product.join(t, i), t * product.image_proj(i))
    assert isinstance(Fusion(64, 64, "product").image_proj, torch.nn.Identity)  # same width: nothing to learn
    torch.testing.assert_close(Fusion(64, 64, "product").join(t, t), t * t)
    concat = Fusion(64, 96, "concat")
    assert concat.out_dim == 160 and not list(concat.parameters())
    torch.testing.assert_close(concat.join(t, i), torch.cat([t, i], dim=-1))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_both_pair_heads_use_the_fusion(fusion):
    torch.manual_seed(0)
    t, i = torch.randn(3, 64), torch.randn(3, 96)
    align = AlignHead(64, 96, fusion, 0.1).eval()
    torch.testing.assert_close(align(t, i), align.classifier(align.join(t, i)).squeeze(-1))
    classifier = ClassifierHead(64, 96, 5, fusion, 0.1).eval()
    torch.testing.assert_close(classifier(t, i), classifier.mlp(classifier.join(t, i)))


def test_unknown_fusion_is_refused():
    with pytest.raises(VlpipeError, match="fusion must be one of product, concat, got 'sum'"):
        ClassifierHead(64, 64, 2, "sum", 0.1)
