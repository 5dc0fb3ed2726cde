"""The files of a cross-validation: `crossval.json` (every figure) and `crossval.md` (the tables)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from model.fileio import atomic_write_bytes
from trainer.evaluation.crossval import METRICS, CrossValidation

JSON_FILE = "crossval.json"
MARKDOWN_FILE = "crossval.md"


def write_crossval_report(result: CrossValidation, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write crossval.json and crossval.md into `out_dir`, each atomically; returns their paths."""
    out = Path(out_dir)
    json_path, markdown_path = out / JSON_FILE, out / MARKDOWN_FILE
    atomic_write_bytes(json_path, json.dumps(result.to_dict(), indent=2, allow_nan=False).encode())
    atomic_write_bytes(markdown_path, render_crossval_markdown(result).encode())
    return json_path, markdown_path


def render_crossval_markdown(result: CrossValidation) -> str:
    """Per scope and k: each method's fold means with 95 % intervals, then the paired tests."""
    lines = [f"## Cross-validated retrieval: {result.task}", "",
             f"{result.folds} folds by patient (seed {result.seed}, fold sizes {', '.join(map(str, result.fold_sizes))}); "
             f"{result.queries} queries, each asked once, by the model of its fold. Percent, mean over folds "
             "± half-width of the 95 % confidence interval (Student's t). Labels: " + ", ".join(result.label_names), ""]
    for scope, per_k in result.results.items():
        for k, methods in per_k.items():
            lines += [f"### {scope}, top {k}", "",
                      "| method | Mean AP | Mean HR | Mean RR | wMean AP | wMean HR | wMean RR |",
                      "| --- | --- | --- | --- | --- | --- | --- |"]
            for method, figures in methods.items():
                cells = [_cell(figures.interval(metric, weighted)) for weighted in (False, True) for metric in METRICS]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines += ["", f"Paired t-tests over all {result.queries} queries (p, AP / HR / RR):", "",
                      "| method | baseline | AP | HR | RR |", "| --- | --- | --- | --- | --- |"]
            for method, baseline in result.comparisons():
                p_values = [_p(result.p_value(scope, k, method, baseline, metric)) for metric in METRICS]
                lines.append(f"| {method} | {baseline} | " + " | ".join(p_values) + " |")
            lines.append("")
    return "\n".join(lines)


def _cell(interval: tuple[float, float]) -> str:
    value, half = interval
    if math.isnan(value):
        return "-"
    return f"{100 * value:.1f}" + ("" if math.isnan(half) else f" ± {100 * half:.1f}")


def _p(value: float) -> str:
    if math.isnan(value):
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"
