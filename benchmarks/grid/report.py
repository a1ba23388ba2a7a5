"""The grid's report: what the records say, row by row, with the statistics of
:mod:`heterolora_core.analysis.stats` (mean ± std over seeds, 95% t-intervals, differences paired
by seed with a better / worse / noise verdict).

The table (printed, and written as JSON next to the records) gives per row and task: trainable
parameters, the final-epoch dev score (headline) as mean ± std over seeds (a seed run twice counts
once, with its mean: :func:`~heterolora_core.analysis.stats.seed_scores`), its 95% t-interval, the
best epoch's mean beside it, the paired difference to the reference row with its 95% t-interval
("noise" when it contains 0), mean wall and search seconds and peak RSS.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from heterolora_core.analysis.allocation import score_drift, set_churn, slot_shares
from heterolora_core.analysis.stats import describe, finite, paired_difference, seed_scores
from heterolora_core.analysis.units import format_interval, format_points
from heterolora_core.methods import registry
from heterolora_core.records.record import RunRecord, RunSummary, Status

from benchmarks.grid.rows import (CONTROL_OF_BUDGET, EMBEDDED, HETERO_ROW, MEMORY_PAIR, ROW_BY_ID, ROWS,
                                  UNIFORM_OF_BUDGET, UNIFORM_ROW, Job)

MEMORY_TARGET = 1.2  # peak RSS of a dynamic run over a uniform one


def mean_of(values: list) -> float | None:
    values = finite(values)
    return statistics.fmean(values) if values else None


def _paired(row: dict[int, float], reference: dict[int, float]) -> dict[str, Any] | None:
    diff = paired_difference(row, reference)
    return None if diff is None else diff.to_dict()


def collect(jobs: list[Job]) -> list[dict[str, Any]]:
    """One dict per job: where it is, its status and what its summary reports."""
    out = []
    for job in jobs:
        record = RunRecord(job.path)
        summary = record.summary() if record.exists() else RunSummary(status="todo")
        churn = None
        method = registry.find(job.config.mode)
        if method is not None and method.searches and method.reallocates and summary.status == Status.DONE:
            reallocations = record.reallocations()
            churn = {**set_churn(reallocations), "on_over_off": score_drift(reallocations)["on_over_off"]}
        out.append({
            "row": job.row.id, "task": job.task, "seed": job.seed, "kind": job.kind, **job.extra,
            "path": str(job.path), "status": summary.status, "metric": summary.metric,
            "final_score": summary.final_score, "best_score": summary.best_score,
            "trainable_params": summary.trainable_params, "head_params": summary.head_params,
            "adalora_initial_params": summary.adalora_initial_params,
            "wall_seconds": summary.wall_seconds, "search_seconds": summary.search_seconds,
            "process_seconds": summary.process_seconds, "peak_rss_mb": summary.peak_rss_mb,
            "peak_gpu_mb": summary.peak_gpu_mb, "device": summary.device, "parallel_runs": summary.parallel_runs,
            "steps": summary.step, "error": summary.error, "churn": churn,
        })
    return out


def aggregate(runs: list[dict[str, Any]], model: str = EMBEDDED) -> list[dict[str, Any]]:
    """The table: one entry per (row, task) with at least one planned run, in ``ROWS`` order."""
    done = [r for r in runs if r["status"] == "done" and r["final_score"] is not None]
    by_row: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in done:
        by_row.setdefault((r["row"], r["task"]), []).append(r)
    finals = {key: seed_scores((r["seed"], r["final_score"]) for r in rs) for key, rs in by_row.items()}
    table = []
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    for task in tasks:
        for row in ROWS:
            planned = [r for r in runs if r["row"] == row.id and r["task"] == task]
            if not planned:
                continue
            mine = [r for r in planned if r["status"] == "done" and r["final_score"] is not None]
            params = sorted({r["trainable_params"] for r in mine if r["trainable_params"] is not None})
            entry = {
                "row": row.id, "label": row.label, "budget": row.budget, "task": task,
                "metric": next((r["metric"] for r in mine if r["metric"]), None),
                "planned": len(planned), "done": len(mine), "seeds": sorted(r["seed"] for r in mine),
                "trainable_params": params[0] if len(params) == 1 else (params or None),
                "expected_params": row.expected_params if model == EMBEDDED else None,
                "adalora_initial_params": next((r["adalora_initial_params"] for r in mine if r["adalora_initial_params"]), None),
                "final": describe(finals.get((row.id, task), {}).values()).to_dict(),
                "best": describe(seed_scores((r["seed"], r["best_score"]) for r in mine).values()).to_dict(),
                "wall_seconds": mean_of([r["wall_seconds"] for r in mine]),
                "search_seconds": mean_of([r["search_seconds"] for r in mine]),
                "peak_rss_mb": mean_of([r["peak_rss_mb"] for r in mine]),
                "peak_gpu_mb": mean_of([r.get("peak_gpu_mb") for r in mine]),
                "mean_swapped": mean_of([r["churn"]["mean_swapped"] for r in mine if r.get("churn")]),
                "ever_enabled": mean_of([r["churn"]["ever_enabled"] for r in mine if r.get("churn")]),
                "on_over_off": mean_of([r["churn"]["on_over_off"] for r in mine if r.get("churn")]),
                "reference": row.reference,
            }
            entry["params_ok"] = (entry["expected_params"] is None or entry["trainable_params"] is None
                                  or entry["trainable_params"] == entry["expected_params"])
            entry.update(_comparisons(row, task, finals))
            table.append(entry)
    return table


def _comparisons(row, task: str, finals: dict[tuple[str, str], dict[int, float]]) -> dict[str, Any]:
    """The row's paired differences: against its reference; rows compared with row 6 (proxy
    sweep, remedies) also against their budget's uniform row; searched rows also against the
    random control (is the proxy better than chance?)."""

    def versus(other: str | None) -> dict[str, Any] | None:
        if other and (other, task) in finals and (row.id, task) in finals:
            return _paired(finals[(row.id, task)], finals[(other, task)])
        return None

    uniform = UNIFORM_OF_BUDGET.get(row.budget)
    uniform = uniform if uniform not in (None, row.id, row.reference) else None
    method = registry.find(row.overrides.get("mode"))
    control = CONTROL_OF_BUDGET.get(row.budget)
    searched = method is not None and method.searches
    control = control if searched and control not in (row.id, row.reference, uniform) else None
    return {"vs_reference": versus(row.reference), "uniform": uniform, "vs_uniform": versus(uniform),
            "control": control, "vs_control": versus(control)}


def _pct(x: float | None, digits: int = 2) -> str:
    """A score in GLUE points, ``-`` when missing (the one conversion: analysis.units)."""
    return format_points(x, digits, missing="-")


def _final_text(stats: dict[str, Any]) -> str:
    if stats["mean"] is None:
        return "-"
    return f"{_pct(stats['mean'])} ± {_pct(stats['std'])}" if stats["std"] is not None else _pct(stats["mean"])


def _ci_text(ci: list[float] | None) -> str:
    return format_interval(ci)


def _difference_text(other: str, vs: dict[str, Any]) -> str:
    """``"4: +1.00 [0.2, 1.8] better"``: a paired difference against row ``other``, in points."""
    return f"{other}: {format_points(vs['mean'], signed=True)} {_ci_text(vs['ci95'])} {vs['verdict']}"


def _seconds(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_table(table: list[dict[str, Any]]) -> str:
    """The table as text; scores in percent of the task's headline metric."""
    head = (f"{'row':<12} {'configuration':<38} {'task':<5} {'trainable':>10} {'n':>3}  {'final mean ± std':<17} {'95% CI':<15} "
            f"{'best':>6}  {'Δ vs ref (95% CI)':<31} {'wall s':>7} {'search s':>8} {'RSS MiB':>8}")
    lines = [head, "-" * len(head)]
    for e in table:
        b = e["best"]
        final, ci = _final_text(e["final"]), _ci_text(e["final"]["ci95"]) or "-"
        params = e["trainable_params"]
        params_text = f"{params:,}" if isinstance(params, int) else ("-" if params is None else "mixed")
        if not e["params_ok"]:
            params_text += "!"
        vs = e["vs_reference"]
        if vs is None:
            vs_text = "(reference)" if e["reference"] is None else "-"
        else:
            vs_text = _difference_text(e["reference"], vs)
        wall, search, rss = _seconds(e["wall_seconds"]), _seconds(e["search_seconds"], 2), _seconds(e["peak_rss_mb"])
        n = f"{e['done']}" if e["done"] == e["planned"] else f"{e['done']}/{e['planned']}"
        lines.append(f"{e['row']:<12} {e['label'][:38]:<38} {e['task']:<5} {params_text:>10} {n:>3}  {final:<17} {ci:<15} "
                     f"{_pct(b['mean']):>6}  {vs_text:<31} {wall:>7} {search:>8} {rss:>8}")
    metrics = sorted({e["metric"] for e in table if e["metric"]})
    lines.append(f"scores: dev {'/'.join(metrics) or 'score'} in %, final epoch (headline) and best epoch; "
                 "Δ: paired by seed against the reference row; noise = its 95% interval contains 0")
    for e in table:
        if e["adalora_initial_params"]:
            lines.append(f"row {e['row']} ({e['task']}): AdaLoRA's counted parameters after its final allocation "
                         f"(kept rank x (d_in + d_out + 1)); {e['adalora_initial_params']:,} at init_r")
    if any(not e["params_ok"] for e in table):
        lines.append("!: trainable parameters differ from the row's stated budget")
    return "\n".join(lines)


def format_markdown(table: list[dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    """The table as Markdown for ``docs/results.md``: one section per task, then every run.
    "set swapped / ever on": a dynamic row's mean share of its enabled set switched off per
    reallocation, and how many modules were ever on (:func:`heterolora_core.analysis.set_churn`);
    "drift on/off": the median score change of modules that were trained since the last
    reallocation over that of the resting ones (:func:`heterolora_core.analysis.score_drift`);
    "RSS MiB" / "GPU MiB": the runs' mean peak resident memory (``os.wait4``) and peak GPU memory
    allocated (``torch.cuda.max_memory_allocated``; "-" on a CPU)."""
    out = []
    for task in dict.fromkeys(e["task"] for e in table):
        metric = next((e["metric"] for e in table if e["task"] == task and e["metric"]), "score")
        out += [f"#### {task.upper()} ({metric}, %)", "",
                "| row | configuration | trainable | seeds | final mean ± std | 95% CI | best epoch | Δ vs ref (95% CI) "
                "| wall s | search s | set swapped / ever on | drift on/off | RSS MiB | GPU MiB |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in (e for e in table if e["task"] == task):
            if e["vs_reference"] is None:
                vs_text = "(reference)" if e["reference"] is None else "-"
            else:
                vs_text = "vs " + _difference_text(e["reference"], e["vs_reference"])
            if e.get("vs_uniform"):
                vs_text += "; vs " + _difference_text(e["uniform"], e["vs_uniform"])
            if e.get("vs_control"):
                vs_text += "; vs " + _difference_text(e["control"], e["vs_control"])
            params = e["trainable_params"]
            churn = "-" if e.get("mean_swapped") is None else f"{100 * e['mean_swapped']:.0f}% / {e['ever_enabled']:.0f}"
            out.append(f"| {e['row']} | {e['label']} | {f'{params:,}' if isinstance(params, int) else '-'} "
                       f"| {','.join(map(str, e['seeds'])) or '-'} | {_final_text(e['final'])} | {_ci_text(e['final']['ci95']) or '-'} "
                       f"| {_pct(e['best']['mean'])} | {vs_text} | {_seconds(e['wall_seconds'])} "
                       f"| {_seconds(e['search_seconds'], 2)} | {churn} | {_seconds(e.get('on_over_off'), 2)} "
                       f"| {_seconds(e['peak_rss_mb'])} | {_seconds(e.get('peak_gpu_mb'))} |")
        out.append("")
    out += ["#### Every run", "", "| task | row | seed | final | best | steps | wall s | search s | set swapped / ever on | drift on/off |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["task"], r["row"], r["seed"])):
        if r["status"] != "done":
            continue
        churn = "-" if not r.get("churn") else f"{100 * r['churn']['mean_swapped']:.0f}% / {r['churn']['ever_enabled']}"
        out.append(f"| {r['task']} | {r['row']} | {r['seed']} | {_pct(r['final_score'])} | {_pct(r['best_score'])} | {r.get('steps', '-')} "
                   f"| {_seconds(r['wall_seconds'])} | {_seconds(r['search_seconds'] or 0.0, 2)} | {churn} "
                   f"| {_seconds((r.get('churn') or {}).get('on_over_off'), 2)} |")
    return "\n".join(out) + "\n"


def lr_sweep_table(runs: list[dict[str, Any]]) -> str:
    lines = [f"{'task':<5} {'row':<4} {'lr':>8} {'final':>7} {'best':>7} {'status':<8}"]
    for r in sorted(runs, key=lambda r: (r["task"], r["row"], r["lr"])):
        lines.append(f"{r['task']:<5} {r['row']:<4} {r['lr']:>8g} {_pct(r['final_score']):>7} "
                     f"{_pct(r['best_score']):>7} {r['status']:<8}")
    return "\n".join(lines)


def memory_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median peak RSS of the dynamic and the uniform runs, their ratio and the paired ratios."""
    uniform_id, dynamic_id = MEMORY_PAIR
    by_round: dict[int, dict[str, float]] = {}
    for r in runs:
        if r["status"] == "done" and r["peak_rss_mb"]:
            by_round.setdefault(r["round"], {})[r["row"]] = r["peak_rss_mb"]
    uniform = [v[uniform_id] for v in by_round.values() if uniform_id in v]
    dynamic = [v[dynamic_id] for v in by_round.values() if dynamic_id in v]
    pairs = [v[dynamic_id] / v[uniform_id] for v in by_round.values() if uniform_id in v and dynamic_id in v]
    out: dict[str, Any] = {"uniform_row": uniform_id, "dynamic_row": dynamic_id, "uniform_mb": uniform,
                           "dynamic_mb": dynamic, "target_ratio": MEMORY_TARGET}
    if uniform and dynamic:
        out["median_uniform_mb"] = statistics.median(uniform)
        out["median_dynamic_mb"] = statistics.median(dynamic)
        out["ratio_of_medians"] = out["median_dynamic_mb"] / out["median_uniform_mb"]
        out["median_paired_ratio"] = statistics.median(pairs) if pairs else None
        out["within_target"] = out["ratio_of_medians"] <= MEMORY_TARGET
    return out




def choose_lrs(sweep_runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per task ``{"uniform": lr, "hetero": lr}``: the rate of the best final-epoch score of row 1
    and of row 6 in the sweep (ties: the smaller rate); a task whose sweep has no finished run of
    a row gets no entry for it."""
    choice: dict[str, dict[str, Any]] = {}
    for run in sweep_runs:
        if run["status"] != "done" or run["final_score"] is None:
            continue
        key = {UNIFORM_ROW: "uniform", HETERO_ROW: "hetero"}.get(run["row"])
        if key is None:
            continue
        best = choice.setdefault(run["task"], {}).get(key)
        current = (run["final_score"], -run["lr"])
        if best is None or current > best[0]:
            choice[run["task"]][key] = (current, run["lr"])
    return {task: {k: v[1] for k, v in picks.items()} for task, picks in choice.items()}


def row_shares(results: Path, task: str, row_id: str, seeds: list[int]) -> dict[str, Any] | None:
    """Where a row's searches put their budget: mean layer and group (LoRA) shares of the enabled
    slots, and the mean final score, over the row's finished seeds (None if none). A module's
    weight is its enable frequency (:func:`heterolora_core.analysis.allocation.slot_shares`); each
    seed's shares come from its own record and are then averaged."""
    row = ROW_BY_ID[row_id]
    per_seed, finals = [], []
    for seed in seeds:
        record = RunRecord(results / task / row.slug / f"seed{seed}")
        if not record.exists() or record.summary().status != Status.DONE:
            continue
        per_seed.append(slot_shares(record.reallocations()))
        finals.append(record.summary().final_score)
    if not per_seed:
        return None
    layers = sorted({k for s in per_seed for k in s["layer"]})
    return {
        "row": row_id, "label": row.label, "seeds": len(per_seed),
        "layer": {k: statistics.fmean(s["layer"].get(k, 0.0) for s in per_seed) for k in layers},
        "lora": statistics.fmean(s["group"].get("lora", 0.0) for s in per_seed),
        "final": mean_of(finals),
    }


def shares_markdown(entries: list[dict[str, Any]]) -> str:
    layers = sorted({k for e in entries for k in e["layer"]})
    lines = [f"| row | layers {' / '.join(map(str, layers))} | LoRA share | seeds | final % (mean) |",
             "|---|---|---|---|---|"]
    for e in entries:
        shares = " / ".join(f"{100 * e['layer'].get(k, 0.0):.0f}%" for k in layers)
        final = _pct(e["final"])
        lines.append(f"| {e['row']} {e['label']} | {shares} | {100 * e['lora']:.0f}% | {e['seeds']} | {final} |")
    return "\n".join(lines)
