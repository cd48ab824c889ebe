"""A plain-text table of a cross-validation: test AUC and accuracy per fold, mean ± sd."""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["format_cv_table"]


def _num(v, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else (
        f"{v:.{digits}f}")


def _mean_sd(summary: Mapping, key: str) -> str:
    s = summary.get(key)
    if not s:
        return "n/a"
    sd = s.get("sd")
    return f"{_num(s['mean'])} ± {_num(sd)}"


def format_cv_table(metrics: Mapping) -> str:
    """The per-fold table of ``metrics.json`` from a cross-validation (empty string otherwise)."""
    folds = metrics.get("folds") or []
    summary = metrics.get("summary")
    if not summary:
        return ""
    head = f"{'fold':>4}  {'train':>5}  {'val':>4}  {'test':>4}  {'epochs':>6}  " \
           f"{'test AUC':>13}  {'test accuracy':>13}"
    lines = [head, "-" * len(head)]
    for f in folds:
        lines.append(
            f"{f['fold']:>4}  {f['n_train']:>5}  {f['n_val']:>4}  {f['n_test']:>4}  "
            f"{f['epochs_selected']:>6}  {_num(f.get('test_auc')):>13}  "
            f"{_num(f.get('test_accuracy')):>13}"
        )
    lines.append("-" * len(head))
    lines.append(f"{'mean ± sd':<33}  {_mean_sd(summary, 'test_auc'):>13}  "
                 f"{_mean_sd(summary, 'test_accuracy'):>13}")
    pooled = summary.get("pooled_test_auc")
    n = sum(f.get("n_test", 0) for f in folds)
    lines.append(f"pooled out-of-fold AUC ({n} bags): {_num(pooled)}")
    final = metrics.get("final_model") or {}
    if final:
        lines.append(f"shipped model: refit on all {final.get('n_bags')} bags for "
                     f"{final.get('epochs')} epochs (median of the folds' selected epochs)")
    return "\n".join(lines)
