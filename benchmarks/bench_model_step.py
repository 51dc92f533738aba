"""Training-step throughput of our ViT-B/16 (uint8 patches in) vs timm's vit_base_patch16_224.

Both run the same step: bf16 autocast, cross-entropy on a 1000-way head over the CLS token, fused
AdamW, batch 256, eager and under torch.compile; then the whole `base` ViLBERT is checked for graph
breaks (torch._dynamo.explain) and, with --base-compile, trained one step with fullgraph=True.
One JSON object per line on stdout, so runs can be appended to a log and compared.

    python benchmarks/bench_model_step.py                 # GPU: the real measurement
    python benchmarks/bench_model_step.py --smoke         # CPU, tiny sizes: checks that the script works
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn

from vlpipe.model import build_model
from vlpipe.model.config import VisionConfig
from vlpipe.model.vit import ViT

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Classifier(nn.Module):
    """Our ViT plus the linear head timm has, so both models do the same work."""

    def __init__(self, cfg: VisionConfig, classes: int) -> None:
        super().__init__()
        self.vit = ViT(cfg)
        self.head = nn.Linear(cfg.hidden, classes)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.head(self.vit(patches)[:, 0])


def optimizer(model: nn.Module) -> torch.optim.Optimizer:
    try:
        return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    except (RuntimeError, TypeError):  # no fused kernel for this device
        return torch.optim.AdamW(model.parameters(), lr=1e-4)


def measure(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace,
            compiled: bool) -> dict:
    device = x.device
    model.to(device).train()
    opt = optimizer(model)
    forward = torch.compile(model, backend=args.backend) if compiled else model

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    elapsed = time.perf_counter() - t0
    return {"bench": "vit_step", "model": name, "compiled": compiled, "batch": x.shape[0],
            "samples_per_s": round(x.shape[0] * args.steps / elapsed, 1),
            "step_ms": round(1000 * elapsed / args.steps, 2), "warmup_s": round(warmup_s, 1),
            "loss": round(float(loss.detach()), 4), "device": device_name(device),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def timm_model(args: argparse.Namespace) -> nn.Module:
    import timm

    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1000, **args.size_kw)


def check_base(args: argparse.Namespace, device: torch.device) -> dict:
    """Graph breaks of the whole two-stream model (0 means torch.compile sees one graph)."""
    torch._dynamo.reset()
    model = build_model(args.preset, args.base_kw).to(device)
    cfg = model.config
    b, n = 8 if args.smoke else 32, cfg.vision.num_patches
    images = torch.randint(0, 256, (b, n, cfg.vision.patch_dim), dtype=torch.uint8, device=device)
    ids = torch.randint(0, cfg.text.vocab_size, (b, 32), device=device)
    mask = torch.arange(32, device=device)[None] < torch.randint(5, 33, (b, 1), device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        explained = torch._dynamo.explain(model)(images, ids, mask)
    result = {"bench": "base_compile", "preset": args.preset, "graphs": explained.graph_count,
              "graph_breaks": explained.graph_break_count,
              "break_reasons": [str(r.reason)[:200] for r in explained.break_reasons],
              "device": device_name(device)}
    if args.base_compile:
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend=args.backend)
        opt = optimizer(model)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = compiled(images, ids, mask)
            loss = model.mlm_head(out.text).float().logsumexp(-1).mean() + \
                model.align_head(out.pooled_text, out.pooled_image).float().mean()
        loss.backward()
        opt.step()
        result["fullgraph_train_step_s"] = round(time.perf_counter() - t0, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (a few seconds): checks the script")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--only", choices=["timm", "ours", "base"], action="append",
                        help="run only these parts (repeatable); default all")
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument("--base-compile", action="store_true", help="also train the base model one step with fullgraph")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--preset", default="base", help="model preset for the graph-break check")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke:
        args.batch, args.steps, args.warmup = 4, 2, 1
        args.backend = "aot_eager"  # traces forward and backward without minutes of C++ codegen on CPU
        args.size_kw = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}
        args.preset = "tiny"
        args.base_kw = {"vision.image_size": 32, "vision.patch_size": 8}
    else:
        args.size_kw = {}
        args.base_kw = {}
        torch.backends.cuda.matmul.allow_tf32 = True
    size_kw = args.size_kw
    cfg = VisionConfig(image_size=size_kw.get("img_size", 224), patch_size=size_kw.get("patch_size", 16),
                       hidden=size_kw.get("embed_dim", 768), layers=size_kw.get("depth", 12),
                       heads=size_kw.get("num_heads", 12), mlp_hidden=4 * size_kw.get("embed_dim", 768),
                       dropout=0.0, attn_dropout=0.0, pixel_mean=MEAN, pixel_std=STD)  # timm: no dropout
    parts = args.only or ["timm", "ours", "base"]
    modes = [False] if args.no_compile else [False, True]
    g = torch.Generator(device="cpu").manual_seed(0)
    y = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    for compiled in modes:
        if "timm" in parts:
            torch._dynamo.reset()
            torch.manual_seed(0)
            pixels = torch.randn(args.batch, 3, cfg.image_size, cfg.image_size, generator=g).to(device)
            print(json.dumps(measure("timm_vit_base_patch16_224", timm_model(args), pixels, y, args, compiled)),
                  flush=True)
        if "ours" in parts:
            torch._dynamo.reset()
            torch.manual_seed(0)
            patches = torch.randint(0, 256, (args.batch, cfg.num_patches, cfg.patch_dim), dtype=torch.uint8,
                                    generator=g).to(device)
            print(json.dumps(measure("vlpipe_vit_b16_uint8", Classifier(cfg, 1000), patches, y, args, compiled)),
                  flush=True)
    if "base" in parts:
        print(json.dumps(check_base(args, device)), flush=True)


if __name__ == "__main__":
    main()
