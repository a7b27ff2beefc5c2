"""A sweep's results: one row per grid point, the Pareto front, the best settings, the plot."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from zhtune.artifacts import read_adapter_meta
from zhtune.errors import UserError
from zhtune.io import atomic_write_json, atomic_write_text, read_json
from zhtune.sweep.grid import SweepPoint


def collect_results(points: list[SweepPoint], failed: dict[str, str]) -> list[dict]:
    """One row per point from its run folder: what finished, failed, or is not finished yet."""
    rows = []
    for point in points:
        out = point.out_dir
        row: dict[str, Any] = {"run": point.name, **point.values}
        cmp_file = out / "compare" / "comparison.json"
        if point.name in failed or not cmp_file.exists():
            row["status"] = "failed" if point.name in failed else "unfinished"
            rows.append(row)
            continue
        cmp = read_json(cmp_file)
        row.update(status="done", **headline_numbers(cmp))
        meta = read_adapter_meta(out / "train")
        if meta:
            row["train_seconds"] = meta.get("train_seconds") or meta.get("train_runtime")
            row["trainable_params"] = meta.get("trainable_params")
        rows.append(row)
    return rows


def headline_numbers(cmp: dict) -> dict:
    """Chinese gain and English forgetting (points, with 95% intervals) from a comparison.json."""
    out: dict[str, Any] = {}
    for name in ("chinese_gain", "english_forgetting"):
        # every benchmark of a language at chance (tiny runs): rank by the figure that includes them
        fig = cmp.get(name) or (cmp.get("pooled_including_floors") or {}).get(name)
        if fig is None:  # the sweep evaluated no benchmark of that language
            raise UserError(f"sweep: the comparison has no {name.replace('_', ' ')}; evaluate at "
                            "least one Chinese (ceval, cmmlu) and one English (mmlu, gsm8k) benchmark")
        out[name] = fig["change_points"]
        out[f"{name}_ci"] = [fig["ci_low"], fig["ci_high"]]
    return out


def pareto_front(rows: list[dict]) -> list[str]:
    """Finished runs not dominated in (more Chinese gain, less English forgetting)."""
    from zhtune.analysis.plots import pareto_front as front_of

    return front_of([r for r in rows if r.get("status") == "done"], label="run")


def write_results(out_root: Path, rows: list[dict], failed: dict[str, str]) -> dict:
    """results.csv, results.md (table, best settings, failed points and why), pareto.png/.svg and
    sweep.json, each written atomically."""
    from zhtune.analysis.plots import plot_pareto

    front = pareto_front(rows)
    done = [r for r in rows if r.get("status") == "done"]
    # Best: the most Chinese gain among Pareto runs whose English forgetting is not significant
    # (interval reaches zero or above); failing that, the best gain-minus-forgetting.
    safe = [r for r in done if r["run"] in front and r["english_forgetting_ci"][0] <= 0]
    best = max(safe or done, key=lambda r: (r["chinese_gain"] - (0 if safe else r["english_forgetting"])),
               default=None)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns + ["pareto"])
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "pareto": r["run"] in front})
    atomic_write_text(out_root / "results.csv", buf.getvalue())
    md = ["| " + " | ".join(columns + ["pareto"]) + " |", "|" + "---|" * (len(columns) + 1)]
    for r in rows:
        md.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + f" | {'yes' if r['run'] in front else ''} |")
    if best:
        md.append(f"\nBest settings: **{best['run']}** (Chinese gain {best['chinese_gain']:+.2f} points, "
                  f"English forgetting {best['english_forgetting']:+.2f} points).")
    if failed:
        md.append("\nFailed runs:\n" + "\n".join(f"- {name}: {why}" for name, why in failed.items()))
    atomic_write_text(out_root / "results.md", "\n".join(md) + "\n")
    if done:
        plot_pareto([{"label": r["run"], "chinese_gain": r["chinese_gain"],
                      "english_forgetting": r["english_forgetting"]} for r in done],
                    out_root / "pareto")
    summary = {"runs": rows, "pareto": front, "best": best["run"] if best else None,
               "failed": list(failed), "failures": failed}
    atomic_write_json(out_root / "sweep.json", summary)
    return summary


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return "" if v is None else str(v)
