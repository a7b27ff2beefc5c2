"""The adapter-scale trade-off: how much Chinese each LoRA scale buys and how much English it costs.

Input is a multi-run evaluation folder with one adapter at several scales (labels such as
``adapter@scale-0.25``, each summary carrying ``adapter_scale``) and, in the same folder or given
separately, the base model's run. Every scale is compared with the base (paired statistics of
``zhtune.analysis.forgetting``). The recommended scale is the one with the largest Chinese gain
among those whose English forgetting (point estimate, base - tuned over the pooled English benchmarks) stays
within the user's tolerance; ties go to less forgetting, then the smaller scale.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from zhtune.analysis.forgetting import Comparison, compare_loaded
from zhtune.analysis.formatting import format_p, signed
from zhtune.analysis.runs import EvalRun, load_run, load_runs
from zhtune.config import AnalysisConfig
from zhtune.errors import UserError
from zhtune.io import atomic_write_json

_SCALE_LABEL = re.compile(r"@scale-([0-9.eE+-]+)$")


@dataclass
class ScalePoint:
    scale: float
    comparison: Comparison

    @property
    def label(self) -> str:
        return self.comparison.tuned.label

    @property
    def gain(self) -> dict:
        return self.comparison.headline()["chinese_gain"]

    @property
    def forgetting(self) -> dict:
        return self.comparison.headline()["english_forgetting"]

    def to_dict(self) -> dict:
        return {"scale": self.scale, "label": self.label, "chinese_gain": self.gain,
                "english_forgetting": self.forgetting,
                "significant_forgetting": self.comparison.significant_forgetting}


@dataclass
class Tradeoff:
    folder: Path
    base: EvalRun
    adapter: str | None
    tolerance: float
    points: list[ScalePoint]  # sorted by scale
    recommended: ScalePoint | None
    reasoning: list[str]

    def to_dict(self) -> dict:
        return {"folder": str(self.folder), "base": self.base.describe(), "adapter": self.adapter,
                "tolerance_points": self.tolerance,
                "rule": "largest Chinese gain among scales whose English forgetting (base - tuned, "
                        "points) is at most the tolerance",
                "recommended_scale": self.recommended.scale if self.recommended else None,
                "recommended_label": self.recommended.label if self.recommended else None,
                "reasoning": self.reasoning, "scales": [p.to_dict() for p in self.points]}

    def plot_points(self) -> list[dict]:
        """Scatter points for plot_pareto: the base at scale 0, then every scale in order."""
        pts = [{"label": "×0 (base)", "chinese_gain": 0.0, "english_forgetting": 0.0}]
        for p in self.points:
            pts.append({"label": f"×{p.scale:g}", "chinese_gain": p.gain["change_points"],
                        "english_forgetting": p.forgetting["change_points"],
                        "chinese_gain_ci": [p.gain["ci_low"], p.gain["ci_high"]],
                        "english_forgetting_ci": [p.forgetting["ci_low"], p.forgetting["ci_high"]]})
        return pts


def scale_of(run: EvalRun) -> float | None:
    """The run's adapter scale: summary.json's ``adapter_scale``, else the ``@scale-X`` label,
    else 1.0 for an adapter run and None for the base model."""
    scale = run.summary.get("adapter_scale")
    if scale is not None:
        return float(scale)
    m = _SCALE_LABEL.search(run.label)
    if m:
        try:
            return float(m.group(1))
        except ValueError:
            raise UserError(f"{run.path}: cannot read the scale in label {run.label!r}") from None
    return 1.0 if run.summary.get("adapter") else None


def _points(x: float) -> str:
    return f"{x:g} point" + ("" if x == 1 else "s")


def _pts(x: float) -> str:
    return signed(x, 2)


def analyze_tradeoff(scale_dir: str | Path, *, tolerance: float | None = None, base_dir: str | Path | None = None,
                     adapter: str | None = None, analysis: AnalysisConfig | None = None) -> Tradeoff:
    """Compare every adapter scale in ``scale_dir`` with the base and recommend a scale (``tolerance``:
    accepted English forgetting in points, by default ``analysis.english_tolerance``)."""
    analysis = analysis or AnalysisConfig()
    tolerance = analysis.english_tolerance if tolerance is None else tolerance
    if tolerance < 0:
        raise UserError(f"--tolerance must be zero or more points, got {tolerance}")
    scale_dir = Path(scale_dir)
    runs = load_runs(scale_dir)
    base_runs = [r for r in runs if r.label == "base" or not r.summary.get("adapter")]
    if base_dir is not None:
        base = load_run(base_dir, prefer="base")
    elif base_runs:
        base = next((r for r in base_runs if r.label == "base"), base_runs[0])
    else:
        raise UserError(f"{scale_dir}: no base run (label 'base' or a run without adapter); pass --base DIR")
    tuned = [r for r in runs if r.summary.get("adapter") and r.label != "base"]
    adapters = sorted({str(r.summary["adapter"]) for r in tuned})
    if adapter is not None:
        tuned = [r for r in tuned if adapter in (r.summary["adapter"], Path(r.summary["adapter"]).name,
                                                 r.label.split("@")[0])]
        if not tuned:
            raise UserError(f"{scale_dir}: no run of adapter {adapter!r}; adapters here: {', '.join(adapters)}")
    elif len(adapters) > 1:
        raise UserError(f"{scale_dir}: several adapters ({', '.join(adapters)}); choose one with --adapter")
    if not tuned:
        raise UserError(f"{scale_dir}: no adapter runs to compare with the base")
    scales = [(scale_of(r), r) for r in tuned]
    seen: dict[float, str] = {}
    for s, r in scales:
        if s in seen:
            raise UserError(f"{scale_dir}: scale {s:g} appears twice ({seen[s]} and {r.label})")
        seen[s] = r.label

    points = []
    for s, r in sorted(scales, key=lambda x: x[0]):
        cmp = compare_loaded(base, r, analysis)
        if cmp.chinese is None or cmp.english is None:
            raise UserError(f"{r.path}: the trade-off needs a pooled Chinese and a pooled English figure (a "
                            f"Chinese and an English benchmark above chance); evaluated: {', '.join(cmp.benchmarks)}"
                            + "".join(f"; {b}: {why}" for b, why in cmp.excluded.items()))
        points.append(ScalePoint(scale=s, comparison=cmp))
    recommended, reasoning = recommend(points, tolerance)
    return Tradeoff(folder=scale_dir, base=base, adapter=adapters[0] if len(adapters) == 1 else adapter,
                    tolerance=tolerance, points=points, recommended=recommended, reasoning=reasoning)


def recommend(points: list[ScalePoint], tolerance: float) -> tuple[ScalePoint | None, list[str]]:
    """The rule of the module docstring, with every step of the reasoning in words."""
    names = points[0].forgetting.get("name", "English forgetting") if points else "English forgetting"
    why = [f"Tolerance: English forgetting (base − tuned accuracy; {names}) of at most {_points(tolerance)}."]
    for p in points:
        g, f = p.gain, p.forgetting
        within = f["change_points"] <= tolerance
        why.append(f"Scale {p.scale:g}: Chinese {_pts(g['change_points'])} points "
                   f"(95% CI {_pts(g['ci_low'])} to {_pts(g['ci_high'])}, p {format_p(g['p_value'])}), "
                   f"English forgetting {_pts(f['change_points'])} points "
                   f"(95% CI {_pts(f['ci_low'])} to {_pts(f['ci_high'])}, p {format_p(f['p_value'])}, "
                   f"{f['verdict']}): " + ("within tolerance." if within else "over tolerance."))
    ok = [p for p in points if p.forgetting["change_points"] <= tolerance]
    if not ok:
        least = min(points, key=lambda p: p.forgetting["change_points"])
        why.append(f"No scale keeps English forgetting within {_points(tolerance)} (the least is "
                   f"{least.forgetting['change_points']:.2f} at scale {least.scale:g}); recommended: do not "
                   f"use the adapter, or raise the tolerance.")
        return None, why
    best = max(ok, key=lambda p: (p.gain["change_points"], -p.forgetting["change_points"], -p.scale))
    if best.gain["change_points"] <= 0:
        why.append("No scale within tolerance improves Chinese accuracy; recommended: do not use the adapter.")
        return None, why
    why.append(f"Recommended scale {best.scale:g}: the largest Chinese gain ({_pts(best.gain['change_points'])} "
               f"points, {best.gain['verdict']}) among the scales within tolerance "
               f"({', '.join(f'{p.scale:g}' for p in ok)}).")
    if best.forgetting["ci_high"] > tolerance:
        why.append(f"Caution: at scale {best.scale:g} the interval of English forgetting reaches "
                   f"{best.forgetting['ci_high']:.2f} points, beyond the tolerance; more questions would "
                   f"be needed to be sure.")
    better = [p for p in points if p.gain["change_points"] > best.gain["change_points"]]
    if better:
        top = max(better, key=lambda p: p.gain["change_points"])
        why.append(f"Scale {top.scale:g} gains more Chinese ({_pts(top.gain['change_points'])} points) but "
                   f"forgets {top.forgetting['change_points']:.2f} points of English.")
    return best, why


def write_tradeoff(tradeoff: Tradeoff, output_dir: str | Path) -> dict[str, Path]:
    """``tradeoff.json`` and the chart ``tradeoff.png`` / ``.svg`` in ``output_dir``."""
    from zhtune.analysis.plots import plot_pareto

    out = Path(output_dir)
    paths = {"json": atomic_write_json(out / "tradeoff.json", tradeoff.to_dict())}
    png, svg = plot_pareto(tradeoff.plot_points(), out / "tradeoff", connect=True, mark_front=False,
                           tolerance=tradeoff.tolerance,
                           highlight=f"×{tradeoff.recommended.scale:g}" if tradeoff.recommended else None,
                           title="LoRA 缩放的取舍 Adapter scale trade-off")
    paths.update(png=png, svg=svg)
    return paths
