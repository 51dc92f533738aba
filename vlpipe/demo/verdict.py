"""What the demo's figures mean: did each learning stage do its job? The summary table and the verdict.

A figure without its yardstick says little ("alignment 0.48" could look fine), so every learned
figure is printed beside its chance level and the level the default settings are calibrated for,
and the demo ends with one line that says learned / did not learn. Rules:

- alignment (AP) learned: validation accuracy above chance by more than 3 binomial standard
  errors of the validation split (0.5 +- 0.087 at 296 samples); it met the calibration when it
  also reaches `AP_GATE`, the CI gate of the default settings;
- pretraining helped downstream: the pretrained init's mean test accuracy beats scratch by more
  than the spread over seeds (the two standard deviations added) and beats the strongest
  single-modality shortcut.
A learning stage that failed makes `ok` false, and `vlpipe demo` exits non-zero.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

CHANCE_AP_ACCURACY = 0.5  # half the validation pairs are mismatched by construction
AP_GATE = 0.85  # what the default settings reach with a margin (tests/test_demo.py asserts it)
SIGMAS = 3.0  # how far above chance counts as learned: binomial standard errors of the split


def splits_text(splits: dict[str, int]) -> str:
    """{"train": 2704, "val": 296} -> "2,704 train / 296 val"."""
    return " / ".join(f"{n:,} {name}" for name, n in splits.items())


def above_chance(chance: float, samples: int) -> float:
    """The accuracy that counts as learned on `samples` samples: chance + SIGMAS standard errors."""
    return chance + SIGMAS * math.sqrt(chance * (1 - chance) / max(samples, 1))


def judge(summary: dict[str, Any]) -> dict[str, Any]:
    """The verdict of each learning stage and of the whole demo, with the one line that says it."""
    train = summary["train"]
    ap, chance = train["val_ap_accuracy"], train["chance_ap_accuracy"]
    bar = above_chance(chance, train.get("val_samples") or 0)
    learned = ap > bar
    if not learned:
        alignment = (f"did NOT learn alignment: val accuracy {ap:.3f}, not above chance {chance:.2f} "
                     f"(needs > {bar:.3f}; the defaults reach >= {AP_GATE})")
    elif ap < AP_GATE:
        alignment = (f"learned alignment partly: val accuracy {ap:.3f} > chance {chance:.2f}, below the "
                     f"{AP_GATE} the defaults reach (more --steps?)")
    else:
        alignment = f"learned alignment: val accuracy {ap:.3f} (chance {chance:.2f}, defaults gate {AP_GATE})"
    out: dict[str, Any] = {"alignment_learned": learned, "alignment": alignment}
    ok = learned
    down = summary.get("downstream")
    if down is not None:
        helped = pretraining_helped(down)
        out["pretraining_helped"] = helped
        out["downstream"] = ("pretraining helped" if helped else "pretraining did NOT help") + \
            f" the true/false task: {gap_line(down)}"
        ok = ok and helped
    out["ok"] = ok
    out["line"] = ("verdict: " + ("learned" if ok else "FAILED") + " - " + alignment
                   + (f"; {out['downstream']}" if down is not None else ""))
    return out


def pretraining_helped(down: dict[str, Any]) -> bool:
    """The gap is larger than the seed spread and the pretrained init beats every shortcut."""
    shortcut = max(down["chance"], *down["shortcuts"].values())
    return down["gap"] > down["spread"] and down["pretrained"]["mean"] > shortcut


def gap_line(down: dict[str, Any]) -> str:
    """Pretrained vs scratch in one line, beside the seed spread, chance and the shortcuts."""
    p, s = down["pretrained"], down["scratch"]
    shortcuts = ", ".join(f"{name.replace('_', ' ')} {value:.2f}" for name, value in down["shortcuts"].items())
    return (f"{down['split']} {down['metric']} {p['mean']:.3f} ± {p['std']:.3f} pretrained vs "
            f"{s['mean']:.3f} ± {s['std']:.3f} from scratch, gap {down['gap']:+.3f} (seed spread {down['spread']:.3f}; "
            f"chance {down['chance']:.2f}; {shortcuts}; {len(p['seeds'])} seeds each)")


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """The figures that show each stage worked, as one table, then the verdict line."""
    fetch, cache, train, bench = (summary[k] for k in ("fetch", "cache", "train", "bench"))
    reasons = ", ".join(f"{reason} {count}" for reason, count in fetch["dropped"].items()) or "none"
    table = Table(title="vlpipe demo", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("fetch", f"{fetch['kept']:,} kept of {fetch['attempted']:,}; dropped {fetch['dropped_total']}: "
                           f"{reasons}")
    table.add_row("cache", f"{cache['samples']:,} samples ({splits_text(cache['splits'])}), "
                           f"{cache['bytes'] / 1e6:.1f} MB in {cache['dir']}")
    table.add_row("alignment (AP)", f"validation accuracy {train['val_ap_accuracy']:.3f} "
                                    f"(chance {train['chance_ap_accuracy']:.2f}; the defaults reach >= {AP_GATE})")
    if train["val_mlm_accuracy"] is not None:
        table.add_row("masked words (MLM)", f"validation accuracy {train['val_mlm_accuracy']:.3f}")
    down = summary.get("downstream")
    if down is not None:
        table.add_row("downstream", f"true/false statements ({splits_text(down['splits'])}): {gap_line(down)}")
        table.add_row("report", down["report"]["markdown"] + ", " + down["report"]["png"])
    table.add_row("loader", f"{bench['vlpipe_samples_per_s']:,.0f} samples/s ({bench['vlpipe_pipeline']}), "
                            f"{bench['speedup']:.1f}x a like-for-like torchvision-style JPEG loader "
                            f"({bench['baseline_samples_per_s']:,.0f}/s; median of {bench['rounds']} rounds)")
    table.add_row("plots", ", ".join(train["plots"]) or "none")
    table.add_row("contact sheet", summary["contact_sheet"])
    table.add_row("time", ", ".join(f"{k} {v:.0f}s" for k, v in summary["seconds"].items()))
    table.add_row("summary", str(Path(summary["out"]) / "summary.json"))
    console.print(table)
    verdict = summary["verdict"]
    console.print(verdict["line"], style="bold green" if verdict["ok"] else "bold red", soft_wrap=True)
