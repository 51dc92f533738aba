"""Label the rows of a labelled reader: the label vocabulary, each row's label id(s), and its fate.

Shared by every labelled reader (vlpipe/ingest/hateful_memes.py, mmimdb.py, food101.py,
generic.py), which give labels as their files write them. The vocabulary comes from the train
split, so a model never has to predict a class it was not trained on. Rows that make the labels
untrustworthy are refused with a one-line VlpipeError naming the file and line; a row that only
cannot be cached (a duplicate id, a missing label outside the test split) is marked with its
problem and skipped later, landing in skipped.parquet.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from vlpipe.cache.format import MISSING_LABEL, LabelSpec
from vlpipe.errors import VlpipeError
from vlpipe.ingest.rows import Row


def label_rows(rows: list[Row], task: str | None, names: tuple[str, ...] | None,
               origin: Path) -> tuple[LabelSpec, list[Row]]:
    """The label spec, and `rows` with label ids, their problems marked and their split settled.

    `task` None: binary or multiclass, by the number of names. `names` given: a fixed vocabulary
    whose ids the rows already hold (Hateful Memes).
    """
    spec, ids = _label_ids(rows, task, names, origin)
    return spec, _mark(rows, ids, spec.multilabel)


def _label_name(value: Any) -> str:
    return str(value).strip()


def _sorted_names(names: set[str]) -> tuple[str, ...]:
    """Sorted, numerically when every name is an integer (so "10" comes after "9")."""
    if names and all(n.lstrip("-").isdigit() for n in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def _label_ids(rows: list[Row], task: str | None, names: tuple[str, ...] | None,
               origin: Path) -> tuple[LabelSpec, list[Any]]:
    """The label vocabulary and each row's label as an id, a tuple of ids, or None (absent).

    The vocabulary is the labels of the train split (all rows when there is none), sorted. A
    val/test label outside it is an error for single-label data (no correct answer exists for
    the model); for multi-label data the unknown name is dropped from that row and counted.
    """
    multilabel = task == "multilabel"
    preset = names is not None  # a fixed vocabulary (Hateful Memes): the rows already hold ids
    if names is None:
        pool = [r for r in rows if r.split == "train"] or rows
        found: set[str] = set()
        for r in pool:
            if r.label is not None:
                found.update(map(_label_name, r.label) if multilabel else [_label_name(r.label)])
        names = _sorted_names(found)
        if not names:
            raise VlpipeError(f"{origin}: no labels found in the train split")
    if task is None:
        task = "binary" if len(names) == 2 else "multiclass"
    if task != "multilabel" and len(names) < 2:
        raise VlpipeError(f"{origin}: only one label ({names[0]!r}) in the train split; "
                          "a classifier needs at least two")
    index = {n: i for i, n in enumerate(names)}
    unknown: Counter[str] = Counter()
    ids: list[Any] = []
    for r in rows:
        if r.label is None:
            ids.append(None)
        elif multilabel:
            known = [index[n] for n in map(_label_name, r.label) if n in index]
            unknown.update(n for n in map(_label_name, r.label) if n not in index)
            ids.append(tuple(sorted(set(known))))
        elif preset:
            ids.append(int(r.label))
        elif _label_name(r.label) in index:
            ids.append(index[_label_name(r.label)])
        else:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise VlpipeError(f"{r.where}: label {r.label!r} is not among the {len(names)} labels of the train "
                              f"split ({shown}); fix the row or remove it")
    return LabelSpec(task, tuple(names), tuple(sorted(unknown.items()))), ids


def _mark(rows: list[Row], ids: list[Any], multilabel: bool) -> list[Row]:
    """Rows with their ids and problems; train rows of a dataset with no dev set get split None.

    Split None lets the build hash `val` out of train by key (--val-fraction), as for unlabelled data.
    A duplicate id keeps its first occurrence (files in train, dev, test order) and every later
    one is skipped as `duplicate_id`, naming both places, so a leak from train into test shows up
    in the build summary and skipped.parquet instead of silently inflating test scores.
    """
    has_dev = any(r.split == "val" for r in rows)
    first: dict[str, Row] = {}
    marked = []
    for r, label in zip(rows, ids, strict=True):
        problem = None
        if r.key in first:
            seen = first[r.key]
            problem = ("duplicate_id", f"{r.where} ({r.split}) repeats id {r.key} of {seen.where} ({seen.split}); "
                                       "kept the first")
        elif r.problem is not None:
            problem = r.problem
        elif label is None and r.split != "test":
            problem = ("missing_label", f"{r.where}: no label (only test samples may be unlabeled)")
        elif label is None and multilabel:
            # A multi-hot row has no "unknown" value; an all-zero row would claim "no genre".
            problem = ("missing_label", f"{r.where}: no labels (multi-label samples must list theirs)")
        first.setdefault(r.key, r)
        split = None if r.split == "train" and not has_dev else r.split
        marked.append(r._replace(label=MISSING_LABEL if label is None else label, split=split, problem=problem))
    return marked
