"""Evaluating a pretraining run beyond its own losses: zero-shot retrieval and linear probing.

    from vlpipe.eval import EvalConfig, evaluate_run
    result = evaluate_run("runs/tiny", EvalConfig(cache="cache/cc", probe_cache="cache/hm"))
    result["retrieval"]["image_to_text"]["r1"], result["probe"]["pretrained"]["fused"]["accuracy"]

The same as `vlpipe eval RUN --cache DIR --probe-cache DIR`; results go to RUN/eval.json.
"""

from vlpipe.eval.evaluate import EVAL_FILE, EvalConfig, evaluate_run

__all__ = ["EVAL_FILE", "EvalConfig", "evaluate_run"]
