# Copied from the team's shared anchors/seed_architecture_step.py (it measured results/anchors/seed-architecture-step-h200.jsonl).
"""GPU anchor: the thesis' architecture assembled from public parts (timm ViT-B/16 + HF BertModel
base + cross-attention blocks + MLM/AP heads), one pretraining step (MLM + AP) in bf16, at the
thesis' text length (192, padded) and at 64. Prints one JSON line per measurement.
Run on a CUDA machine with timm and transformers installed: python seed_architecture_step.py > seedarch.jsonl
The H200 figures in seed-architecture-step-h200.jsonl came from this script.

Changes from the team's copy, none of them to what the default command measures: one statement per
line (the project's lint), no unused import, and flags so that benchmarks/gpu_check.py can pick runs
(`--run compiled:64`) and its CPU smoke run can use it at toy sizes (`--device cpu --size tiny
--precision fp32`). With no flags it runs exactly the anchor's three measurements.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

T0 = time.time()
# The widths and model options of each --size; "base" is the thesis' architecture, "tiny" a toy copy
# of it for checking the script on a CPU.
SIZES = {
    "base": {"d": 768, "heads": 12, "vit": {}, "bert": {}, "image": 224},
    "tiny": {"d": 64, "heads": 2, "vit": {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2},
             "bert": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128},
             "image": 32},
}
torch.backends.cuda.matmul.allow_tf32 = True


def out(**kw: object) -> None:
    kw["t"] = round(time.time() - T0, 1)
    print(json.dumps(kw), flush=True)


class Cross(nn.Module):
    def __init__(s, d: int = 768, h: int = 12) -> None:
        super().__init__()
        s.t2i = nn.MultiheadAttention(d, h, batch_first=True)
        s.i2t = nn.MultiheadAttention(d, h, batch_first=True)
        s.nt, s.ni = nn.LayerNorm(d), nn.LayerNorm(d)
        s.ft = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        s.fi = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        s.nt2, s.ni2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(s, t: torch.Tensor, i: torch.Tensor, tpad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = s.t2i(s.nt(t), s.ni(i), s.ni(i), need_weights=False)[0]
        b = s.i2t(s.ni(i), s.nt(t), s.nt(t), key_padding_mask=tpad, need_weights=False)[0]
        t = t + a
        i = i + b
        return t + s.ft(s.nt2(t)), i + s.fi(s.ni2(i))


class SeedArch(nn.Module):
    def __init__(s, n_cross: int = 4, size: str = "base") -> None:
        super().__init__()
        import timm
        from transformers import BertConfig, BertModel

        spec = SIZES[size]
        s.vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **spec["vit"])
        cfg = BertConfig(**spec["bert"])
        cfg._attn_implementation = "sdpa"
        s.bert = BertModel(cfg, add_pooling_layer=False)
        s.cross = nn.ModuleList(Cross(spec["d"], spec["heads"]) for _ in range(n_cross))
        s.mlm = nn.Linear(spec["d"], 30522)
        s.ap = nn.Linear(2 * spec["d"], 1)

    def forward(s, img: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, mlm_labels: torch.Tensor,
                ap_labels: torch.Tensor) -> torch.Tensor:
        i = s.vit.forward_features(img)
        t = s.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        for c in s.cross:
            t, i = c(t, i, mask == 0)
        mlm = F.cross_entropy(s.mlm(t).flatten(0, 1).float(), mlm_labels.flatten(), ignore_index=-100)
        ap = F.binary_cross_entropy_with_logits(s.ap(torch.cat([t[:, 0], i[:, 0]], -1)).squeeze(-1).float(), ap_labels)
        return mlm + ap


def bench(name: str, B: int, L: int, args: argparse.Namespace, compile_: bool = False) -> None:
    dev, cuda = args.device, args.device.startswith("cuda")
    try:
        m = SeedArch(size=args.size).to(dev)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=cuda)
        f = torch.compile(m) if compile_ else m
        size = SIZES[args.size]["image"]
        img = torch.randn(B, 3, size, size, device=dev)
        ids = torch.randint(1000, 30000, (B, L), device=dev)
        mask = torch.ones(B, L, dtype=torch.long, device=dev)
        mask[:, 24:] = 0  # ~20-token captions padded to L
        lab = torch.full((B, L), -100, device=dev)
        lab[:, 1:4] = ids[:, 1:4]
        apl = torch.randint(0, 2, (B,), device=dev).float()
        bf16 = args.precision == "bf16"

        def step() -> None:
            with torch.autocast(torch.device(dev).type, dtype=torch.bfloat16) if bf16 else nullcontext():
                loss = f(img, ids, mask, lab, apl)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def sync() -> None:
            if cuda:
                torch.cuda.synchronize()

        tw = time.time()
        for _ in range(args.warm):
            step()
        sync()
        tw = time.time() - tw
        if cuda:
            e0, e1 = torch.cuda.Event(True), torch.cuda.Event(True)
            e0.record()
            for _ in range(args.steps):
                step()
            e1.record()
            torch.cuda.synchronize()
            ms = e0.elapsed_time(e1) / args.steps
        else:  # CUDA events time only CUDA work; the CPU smoke run times the wall clock
            began = time.perf_counter()
            for _ in range(args.steps):
                step()
            ms = 1000 * (time.perf_counter() - began) / args.steps
        out(bench=name, batch=B, text_len=L, ms_per_step=round(ms, 1), samples_per_s=round(B * 1000 / ms),
            warmup_s=round(tw, 1), params_m=round(sum(p.numel() for p in m.parameters()) / 1e6, 1),
            peak_mem_gb=round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None)
    except Exception as e:
        out(bench=name, error=repr(e)[:300])
    finally:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


def run_spec(text: str) -> tuple[str, int]:
    mode, _, length = text.partition(":")
    if mode not in ("eager", "compiled") or not length.isdigit():
        raise argparse.ArgumentTypeError(f"expected eager:L or compiled:L (L = text length), got {text!r}")
    return mode, int(length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=run_spec, action="append", metavar="MODE:L",
                        help="eager:L or compiled:L, repeatable (default: eager:192, eager:64, compiled:64)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warm", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--compile-deadline", type=float, default=150.0,
                        help="a compiled run starts only if fewer seconds than this have passed")
    args = parser.parse_args()
    runs = args.run or [("eager", 192), ("eager", 64), ("compiled", 64)]
    cuda = args.device.startswith("cuda")
    out(gpu=torch.cuda.get_device_name(args.device) if cuda else "cpu", torch=torch.__version__)
    for mode, length in runs:
        compiled = mode == "compiled"
        if compiled and time.time() - T0 >= args.compile_deadline:
            out(bench=f"seedarch_{mode}_L{length}", error=f"skipped: {args.compile_deadline:.0f} s had passed")
            continue
        bench(f"seedarch_{mode}_L{length}", args.batch, length, args, compile_=compiled)
    out(done=True)


if __name__ == "__main__":
    main()
