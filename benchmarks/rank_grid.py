"""Heterogeneous ranks against uniform LoRA (issue 15): the report of the rank sweeps.

    python benchmarks/rank_grid.py                       # the rank sweeps under benchmarks/grids/ (MRPC, SST-2)
    python benchmarks/rank_grid.py FILE.yaml ... [--home data] [--markdown] [--json PATH]

Each sweep file's rows are read from their record folders under the data home (the runs are queued
by ``python -m heterolora_core sweep FILE --wait``). Per row: the final-epoch dev score as mean ± std
over seeds with its 95% t-interval, the best epoch's mean, and the paired differences (by seed) that
the row's ``report:`` block asks for: ``reference`` (uniform LoRA at the same budget), ``control``
(the same ranks dealt at random among candidates of equal cost) and ``versus`` (other rows, e.g.
AdaLoRA and EVA); "noise" where the 95% interval holds 0. Then the cost (median search and wall
seconds, search as a share of wall) and, for rows whose records carry ranks, where they went: the
mean final rank per module kind (over layers and seeds) and each layer's share of the adapter
parameters, from the final reallocation line; and the training curves (the mean dev score after
each epoch, the last logged training loss). The statistics are
:mod:`heterolora_core.analysis.stats`; scores print in GLUE points.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from heterolora_core.analysis.allocation import has_ranks, rank_frame
from heterolora_core.analysis.stats import Description, PairedDifference, describe, paired_difference, seed_scores
from heterolora_core.analysis.units import format_interval, format_points
from heterolora_core.records.home import PROJECT_ROOT, data_home
from heterolora_core.records.record import RunRecord, RunSummary, Status
from heterolora_core.sweeps import expand, load_sweep

from benchmarks.common import write_json

GRIDS = PROJECT_ROOT / "benchmarks" / "grids"
DEFAULT_SWEEPS = [GRIDS / "ranks_mrpc_b.yaml", GRIDS / "ranks_mrpc_a.yaml", GRIDS / "ranks_mrpc_more.yaml",
                  GRIDS / "ranks_sst2_b.yaml"]
KINDS = ("q", "k", "v", "o", "ffn_in", "ffn_out")


@dataclass
class RowReport:
    """One row of a rank sweep: its runs' scores by seed, costs, ranks and comparisons."""

    sweep: str
    row: str
    label: str
    budget: str
    planned: int
    final: dict[int, float] = field(default_factory=dict)
    best: dict[int, float] = field(default_factory=dict)
    trainable_params: list[int] = field(default_factory=list)
    search_seconds: float | None = None
    wall_seconds: float | None = None
    rank_by_kind: dict[str, float] = field(default_factory=dict)
    layer_share: dict[int, float] = field(default_factory=dict)
    wanted: list[str] = field(default_factory=list)
    versus: dict[str, PairedDifference | None] = field(default_factory=dict)
    curve: dict[float, float] = field(default_factory=dict)  # epoch -> mean dev score over seeds
    last_train_loss: float | None = None  # mean over seeds of the last logged training loss

    @property
    def stats(self) -> Description:
        return describe(self.final.values())


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _where_ranks_went(records: list[RunRecord]) -> tuple[dict[str, float], dict[int, float]]:
    """Mean final rank per kind over layers and seeds; each layer's share of Σ r (d_in + d_out),
    with every kind of the embedded model the same width (d_in + d_out = 2 · hidden, but ffn:
    hidden + 4 · hidden), averaged over seeds."""
    frames = [rank_frame(lines) for lines in (r.reallocations() for r in records) if has_ranks(lines)]
    if not frames:
        return {}, {}
    by_kind: dict[str, float] = {}
    shares: dict[int, list[float]] = {}
    for kind in KINDS:
        values = [f.loc[f["kind"] == kind, "rank"].mean() for f in frames if (f["kind"] == kind).any()]
        if values:
            by_kind[kind] = float(statistics.fmean(values))
    for frame in frames:
        width = frame["kind"].map(lambda k: 5.0 if str(k).startswith("ffn") else 2.0)  # (d_in + d_out) / hidden
        cost = frame["rank"] * width
        total = float(cost.sum()) or 1.0
        for layer, value in cost.groupby(frame["layer"]).sum().items():
            shares.setdefault(int(layer), []).append(float(value) / total)
    return by_kind, {layer: float(statistics.fmean(v)) for layer, v in sorted(shares.items())}


def _curves(records: list[RunRecord], summaries: list[RunSummary]) -> tuple[dict[float, float], float | None]:
    """Mean dev score (headline metric) at each evaluated epoch, over the runs that reached it, and
    the mean of each run's last logged training loss (``summaries``: the records' own, already read)."""
    by_epoch: dict[float, list[float]] = {}
    losses: list[float] = []
    for record, summary in zip(records, summaries):
        key = f"eval_{summary.metric}"
        lines = record.metrics()
        for line in lines:
            if key in line and "epoch" in line:
                by_epoch.setdefault(round(float(line["epoch"]), 2), []).append(float(line[key]))
        train = [line["loss"] for line in lines if "loss" in line]
        if train:
            losses.append(float(train[-1]))
    curve = {epoch: float(statistics.fmean(v)) for epoch, v in sorted(by_epoch.items())}
    return curve, (float(statistics.fmean(losses)) if losses else None)


def read_sweep_rows(path: Path, home: Path) -> list[RowReport]:
    """The :class:`RowReport` of every row of one sweep file, without comparisons (:func:`compare`)."""
    spec = load_sweep(path)
    reports: dict[str, RowReport] = {}
    records: dict[str, list[RunRecord]] = {}
    for run in expand(spec):
        report = reports.setdefault(run.row.row, RowReport(spec.sweep, run.row.row, run.row.label,
                                                           str(run.row.report.get("budget", "")), 0))
        report.planned += 1
        record = RunRecord(home / run.folder)
        summary = record.summary() if record.exists() else None
        if summary is None or summary.status != Status.DONE:
            continue
        records.setdefault(run.row.row, []).append(record)
        report.final.update(seed_scores([(run.config.seed, summary.final_score)]))
        report.best.update(seed_scores([(run.config.seed, summary.best_score)]))
        if summary.trainable_params is not None:
            report.trainable_params.append(summary.trainable_params)
    for spec_row in spec.rows:
        report = reports[spec_row.row]
        done = records.get(spec_row.row, [])
        summaries = [r.summary() for r in done]
        report.search_seconds = _median([s.search_seconds for s in summaries if s.search_seconds is not None])
        report.wall_seconds = _median([s.wall_seconds for s in summaries if s.wall_seconds is not None])
        report.rank_by_kind, report.layer_share = _where_ranks_went(done)
        report.curve, report.last_train_loss = _curves(done, summaries)
        report.wanted = [w for w in dict.fromkeys([spec_row.report.get("reference"), spec_row.report.get("control"),
                                                   *spec_row.report.get("versus", [])]) if w]
    return list(reports.values())


def compare(reports: list[RowReport]) -> None:
    """Fill each row's paired differences against the rows its ``report:`` block names (rows of any
    of the sweeps read: a row id names one row across them); a named row not read is left out."""
    by_id = {r.row: r for r in reports}
    for report in reports:
        for other in report.wanted:
            if other in by_id:
                report.versus[other] = paired_difference(report.final, by_id[other].final)


def _difference(other: str, diff: PairedDifference | None) -> str:
    if diff is None:
        return f"vs {other}: -"
    interval = format_interval(diff.ci95)
    return f"vs {other}: {format_points(diff.mean, signed=True)} {interval + ' ' if interval else ''}{diff.verdict}"


def _score(report: RowReport) -> tuple[str, str]:
    stats = report.stats
    if stats.mean is None:
        return "-", "-"
    text = format_points(stats.mean) + (f" ± {format_points(stats.std)}" if stats.std is not None else "")
    return text, format_interval(stats.ci95) or "-"


def _params(report: RowReport) -> str:
    values = sorted(set(report.trainable_params))
    return "-" if not values else (f"{values[0]:,}" if len(values) == 1 else f"{values[0]:,}–{values[-1]:,}")


def _cost(report: RowReport) -> str:
    if report.wall_seconds is None:
        return "-"
    search = report.search_seconds or 0.0
    return f"{search:.1f} / {report.wall_seconds:.0f} ({100 * search / report.wall_seconds:.2f}%)"


def _ranks(report: RowReport) -> str:
    if not report.rank_by_kind:
        return "-"
    kinds = ", ".join(f"{k} {v:.1f}" for k, v in report.rank_by_kind.items())
    layers = " ".join(f"{100 * v:.0f}" for v in report.layer_share.values())
    return f"{kinds}; layers 0→{len(report.layer_share) - 1}: {layers}%"


def format_markdown(reports: list[RowReport]) -> str:
    """One Markdown table per sweep, then where the ranks went."""
    out: list[str] = []
    for sweep in dict.fromkeys(r.sweep for r in reports):
        rows = [r for r in reports if r.sweep == sweep]
        out += [f"#### {sweep}", "", "| row | configuration | budget | trainable | seeds | final mean ± std | 95% CI "
                "| best epoch | paired Δ (95% CI) | search s / wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            score, ci = _score(r)
            diffs = "; ".join(_difference(o, d) for o, d in r.versus.items()) or "(reference)"
            seeds = ",".join(map(str, sorted(r.final))) if r.final else "none"
            seeds += "" if len(r.final) == r.planned else f" ({len(r.final)} of {r.planned})"
            out.append(f"| {r.row} | {r.label} | {r.budget} | {_params(r)} | {seeds} | {score} | {ci} "
                       f"| {format_points(describe(r.best.values()).mean)} | {diffs} | {_cost(r)} |")
        curved = [r for r in rows if r.curve]
        if curved:
            out += ["", "| row | dev score after each epoch (mean over seeds) | last training loss |", "|---|---|---|"]
            out += [f"| {r.row} | " + " → ".join(f"{format_points(v)} (ep {e:g})" for e, v in r.curve.items())
                    + (f" | {r.last_train_loss:.3f} |" if r.last_train_loss is not None else " | - |") for r in curved]
        ranked = [r for r in rows if r.rank_by_kind]
        if ranked:
            out += ["", "| row | mean final rank per kind; each layer's share of the adapter parameters |", "|---|---|"]
            out += [f"| {r.row} | {_ranks(r)} |" for r in ranked]
        out.append("")
    return "\n".join(out)


def to_json(reports: list[RowReport]) -> list[dict[str, Any]]:
    out = []
    for r in reports:
        entry = asdict(r)
        entry["final_stats"] = r.stats.to_dict()
        entry["versus"] = {o: (d.to_dict() if d else None) for o, d in r.versus.items()}
        out.append(entry)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="*", type=Path, default=DEFAULT_SWEEPS, help="sweep files (default: the rank sweeps, MRPC and SST-2)")
    parser.add_argument("--home", type=Path, default=None, help="the data home holding the records (default: data/)")
    parser.add_argument("--json", type=Path, default=PROJECT_ROOT / "benchmarks" / "results" / "ranks.json")
    parser.add_argument("--markdown", action="store_true", help="print Markdown only (for docs/results.md)")
    args = parser.parse_args(argv)
    home = args.home or data_home()
    try:
        reports = [r for path in args.sweeps for r in read_sweep_rows(path, home)]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    compare(reports)
    print(format_markdown(reports))
    write_json(args.json, {"home": str(home), "sweeps": [str(p) for p in args.sweeps], "rows": to_json(reports)})
    if not args.markdown:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
