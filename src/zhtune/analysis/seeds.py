"""How far the primary figures move between training seeds, beside how far they move between questions.

A run's 95% interval covers the questions: another sample of questions would move its estimate that
much. It says nothing of the training seed. Replicates -- runs of one design that differ only in
``train.seed``, evaluated on the same questions against the same base -- measure that. For every
primary figure (the pooled Chinese and English headlines, each benchmark, bits per character on each
probe) :func:`seed_spread` gives:

- each seed's estimate and question-level interval, as its comparison.json printed them;
- the spread across seeds: range, sample SD, and the SD's 95% upper bound (chi-square with k - 1 df;
  with two seeds that bound is 32 times the SD seen, which is why two seeds measure the spread once
  and bound it hardly at all);
- the seeds compared with each other **on the same questions**: the paired change (seed minus the
  first seed) with the same procedure as base vs tuned (McNemar's exact p, Tango interval, the
  cluster-robust design effect for pooled figures; for bits, the paired ratio estimator over texts).
  p < 0.05 says the adapters differ by more than the questions explain: one seed's interval then
  understates the uncertainty of the recipe.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Sequence

import yaml
from scipy.stats import chi2

from zhtune.analysis.formatting import benchmark_name, format_p, num, signed
from zhtune.analysis.paired import bits_per_character, paired_stats, pooled_stats
from zhtune.analysis.runs import load_run, paired_cells, total
from zhtune.analysis.stats import GAIN
from zhtune.errors import UserError
from zhtune.registration import flatten

HEADLINES = ("chinese_gain", "english_forgetting")
PROBES = {"zh": "Chinese seed tasks", "en": "English seed tasks", "zh_control": "Chinese control texts",
          "en_control": "English control texts"}
# Of a replicate's training settings, these may differ: the seed, and where the run wrote its files.
MAY_DIFFER = ("train.seed", "output.")
METHOD = ("Replicates: runs of one design that differ only in train.seed, evaluated on the same questions "
          "against the same base. Per figure: each seed's estimate and 95% interval as its comparison printed "
          "them (intervals over questions, or over texts for bits per character); the seed-to-seed range and "
          "sample SD, with the SD's 95% upper bound from the chi-square distribution with seeds - 1 degrees of "
          "freedom; each seed against the first on the same questions (texts) with the procedure of base vs "
          "tuned: McNemar's exact p and Tango's score interval, on effective counts with the cluster-robust "
          "design effect for pooled figures; for bits, the paired ratio estimator over texts. p < 0.05: the "
          "adapters differ by more than the questions explain, so one seed's interval understates the "
          "uncertainty of the recipe.")


def _training_settings(comparison: dict) -> dict | None:
    """The resolved config of the training that made the tuned run's adapter (next to the adapter), flat."""
    adapter = comparison["tuned"].get("adapter")
    path = Path(adapter).parent / "config.resolved.yaml" if adapter else None
    return flatten(yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path and path.is_file() else None


def check_replicates(comparisons: Sequence[dict]) -> list[str]:
    """Refuse comparisons that are not replicates of one design; return notes on what could not be checked."""
    if len(comparisons) < 2:
        raise UserError("seeds: give at least two comparisons (one per training seed)")
    first, notes = comparisons[0], []
    for c in comparisons[1:]:
        for what, get in (("base evaluation", lambda d: d["base"]["dir"]),
                          ("evaluation settings", lambda d: d.get("settings_fingerprint")),
                          ("model", lambda d: d["tuned"].get("model")),
                          ("number of questions", lambda d: d.get("n_questions")),
                          ("headline formulation", lambda d: d.get("headline_formulation"))):
            if get(c) != get(first):
                raise UserError(f"seeds: {c['tuned']['dir']} is not a replicate of {first['tuned']['dir']}: "
                                f"its {what} differs ({get(c)} vs {get(first)})")
    settings = [_training_settings(c) for c in comparisons]
    missing = [c["tuned"]["dir"] for c, s in zip(comparisons, settings, strict=True) if s is None]
    if missing:
        notes.append(f"the training settings of {', '.join(missing)} were not found next to the adapter: "
                     "that the runs differ only in train.seed was not checked")
        return notes
    for c, s in zip(comparisons[1:], settings[1:], strict=True):
        differ = sorted(k for k in set(s) | set(settings[0]) if s.get(k) != settings[0].get(k)
                        and not k.startswith(MAY_DIFFER))
        if differ:
            raise UserError(f"seeds: {c['tuned']['dir']} is not a replicate of {first['tuned']['dir']}: its "
                            f"training differs in {', '.join(differ)} (only train.seed may differ)")
    seeds = [s.get("train.seed") for s in settings]
    if len(set(seeds)) < len(seeds):
        notes.append(f"training seeds {seeds} repeat: repeated seeds measure non-determinism, not the seed")
    return notes


def _spread(estimates: list[float]) -> dict:
    k = len(estimates)
    sd = statistics.stdev(estimates)
    return {"mean": statistics.fmean(estimates), "range": max(estimates) - min(estimates), "sd": sd,
            # 95% upper confidence bound of the seed SD: (k - 1) s^2 / sigma^2 ~ chi-square(k - 1).
            "sd_upper_95": sd * math.sqrt((k - 1) / chi2.ppf(0.025, k - 1))}


def _between_accuracy(runs, names: list[str], pooled: bool, margin: float, sign: float) -> list[dict]:
    """Each seed against the first on the same questions: change in points (in the figure's direction:
    ``sign`` -1 for forgetting, base - tuned), interval, p."""
    out = []
    for run in runs[1:]:
        cells, _ = paired_cells(runs[0], run)
        members = {k: v for k, v in cells.items() if k[0] in names}
        g = pooled_stats(members, GAIN, margin) if pooled else paired_stats(total(list(members.values())), GAIN, margin)
        d = g.to_dict()
        low, high = sorted((sign * d["ci_low"] + 0.0, sign * d["ci_high"] + 0.0))
        out.append({"seed": run.label, "against": runs[0].label, "change": sign * d["change_points"] + 0.0,
                    "ci_low": low, "ci_high": high, "p": d["p_value"],
                    "discordant": d["base_right_tuned_wrong"] + d["base_wrong_tuned_right"], "n": d["n"]})
    return out


def _between_bits(runs, bits: list[dict], probe: str) -> list[dict]:
    """``bits``: bits_per_character of each later seed against the first (one dict per later run)."""
    out = []
    for run, by_probe in zip(runs[1:], bits, strict=True):
        b = by_probe.get(probe) or {}
        if "relative_change" not in b:
            return []
        out.append({"seed": run.label, "against": runs[0].label, "change": 100 * b["relative_change"],
                    "ci_low": 100 * b["relative_low"], "ci_high": 100 * b["relative_high"], "p": b["p"]})
    return out


def _figures(comparisons: Sequence[dict]):
    """(key, name, unit, per-seed (estimate, low, high, p), accuracy benchmarks or bits probe, pooled?)."""
    first = comparisons[0]
    for key in HEADLINES:
        if all(c.get(key) for c in comparisons):
            f = first[key]
            yield (key, f["name"], "points", [(c[key]["change_points"], c[key]["ci_low"], c[key]["ci_high"],
                                               c[key]["p_value"]) for c in comparisons], f["benchmarks"], True)
    for bench in first["benchmarks"]:
        yield (bench, benchmark_name(bench), "points",
               [(c["benchmarks"][bench]["change_points"], c["benchmarks"][bench]["ci_low"],
                 c["benchmarks"][bench]["ci_high"], c["benchmarks"][bench]["p_value"]) for c in comparisons],
               [bench], False)
    for probe in first.get("perplexity") or {}:
        rows = [(c.get("perplexity") or {}).get(probe) or {} for c in comparisons]
        if all("relative_change" in r for r in rows):
            yield (f"bits_{probe}", f"bits per character, {PROBES.get(probe, probe)}", "percent",
                   [(100 * r["relative_change"], 100 * r["relative_low"], 100 * r["relative_high"], r["p"])
                    for r in rows], probe, False)


def seed_spread(comparisons: Sequence[dict], seeds: Sequence[str] | None = None) -> dict:
    """The spread of every primary figure across replicates (see the module docstring): ``seeds.json``."""
    notes = check_replicates(comparisons)
    runs = []
    for c in comparisons:
        try:
            runs.append(load_run(c["tuned"]["dir"]))
        except (UserError, OSError) as e:
            raise UserError(f"seeds: cannot read the tuned evaluation {c['tuned']['dir']} that a comparison "
                            f"names (run from the folder the comparison was made in): {e}") from e
    labels = list(seeds) if seeds else [c["tuned"]["dir"] for c in comparisons]
    if len(labels) != len(comparisons):
        raise UserError(f"seeds: {len(labels)} seed labels for {len(comparisons)} comparisons")
    for run, label in zip(runs, labels, strict=True):
        run.label = label
    margin = comparisons[0]["statistics"]["gain_margin"]
    bits = [bits_per_character(runs[0].summary, run.summary) for run in runs[1:]]
    figures = []
    for key, name, unit, per_seed, members, pooled in _figures(comparisons):
        between = (_between_bits(runs, bits, members) if unit == "percent"
                   else _between_accuracy(runs, members, pooled, margin, -1.0 if key == "english_forgetting" else 1.0))
        figures.append({
            "figure": key, "name": name, "unit": unit, "members": [members] if unit == "percent" else members,
            "seeds": [{"seed": s, "estimate": e, "ci_low": lo, "ci_high": hi, "p": p}
                      for s, (e, lo, hi, p) in zip(labels, per_seed, strict=True)],
            **_spread([e for e, *_ in per_seed]),
            "question_half_width": statistics.fmean((hi - lo) / 2 for _, lo, hi, _ in per_seed),
            "between_seeds": between,
        })
    return {"seeds": labels, "runs": [c["tuned"]["dir"] for c in comparisons], "base": comparisons[0]["base"]["dir"],
            "figures": figures, "sentences": [_sentence(f) for f in figures if _in_sentences(f, figures)],
            "notes": notes, "method": METHOD}


def _sentence(f: dict) -> str:
    unit = " points" if f["unit"] == "points" else "%"
    units = "texts" if f["unit"] == "percent" else "questions"
    each = "; ".join(f"seed {s['seed']} {signed(s['estimate'])}{unit} ({num(s['ci_low'])} to {num(s['ci_high'])})"
                     for s in f["seeds"])
    text = (f"{f['name'][0].upper()}{f['name'][1:]}: {each}. Seed-to-seed range {num(f['range'])}{unit}, "
            f"beside a {units[:-1]}-level 95% interval of ±{num(f['question_half_width'])}{unit}.")
    for b in f["between_seeds"]:
        differ = (f"they differ by more than the {units} explain" if b["p"] < 0.05
                  else f"the {units} do not tell them apart")
        text += (f" On the same {units}, seed {b['seed']} vs seed "
                 f"{b['against']}: {signed(b['change'])}{unit} ({num(b['ci_low'])} to {num(b['ci_high'])}, "
                 f"p {format_p(b['p'])}): {differ}.")
    if len(f["seeds"]) == 2:
        text += (f" Two seeds bound the seed SD only loosely: up to {num(f['sd_upper_95'])}{unit} is not excluded "
                 "at 95%.")
    return text


def _in_sentences(f: dict, figures: list[dict]) -> bool:
    """The headlines, the bits, and a benchmark only where no headline pools it (MMLU at chance)."""
    pooled = {b for g in figures if g["figure"] in HEADLINES for b in g["members"]}
    return f["figure"] in HEADLINES or f["unit"] == "percent" or f["figure"] not in pooled


def write_seed_spread(result: dict, output_dir: str | Path) -> dict[str, Path]:
    """``seeds.json`` (with the code's provenance) and ``seeds.md`` in ``output_dir``, atomically."""
    from zhtune.artifacts import provenance
    from zhtune.io import atomic_write_json, atomic_write_text

    out = Path(output_dir)
    return {"json": atomic_write_json(out / "seeds.json", {**result, "provenance": provenance()}),
            "md": atomic_write_text(out / "seeds.md", seeds_markdown(result))}


def seeds_markdown(result: dict) -> str:
    """seeds.md: the table and the sentences."""
    heads = " | ".join(f"seed {s}" for s in result["seeds"])
    lines = ["# Seed-to-seed spread", "", f"Replicates of one design: {', '.join(result['runs'])}; base "
             f"{result['base']}.", "", f"| Figure | {heads} | Range | SD (95% upper) | One run's ±95% (questions; bits: texts) | "
             "Seed vs first seed, same questions |", "|" + "---|" * (len(result["seeds"]) + 5)]
    for f in result["figures"]:
        unit = "" if f["unit"] == "points" else "%"
        cells = " | ".join(f"{signed(s['estimate'])}{unit} ({num(s['ci_low'])} to {num(s['ci_high'])})"
                           for s in f["seeds"])
        between = "; ".join(f"{signed(b['change'])}{unit} ({num(b['ci_low'])} to {num(b['ci_high'])}), p "
                            f"{format_p(b['p'])}" for b in f["between_seeds"]) or "–"
        lines.append(f"| {f['name']} ({'points' if unit == '' else 'bits, relative'}) | {cells} | "
                     f"{num(f['range'])} | {num(f['sd'])} ({num(f['sd_upper_95'])}) | ±{num(f['question_half_width'])} "
                     f"| {between} |")
    for paragraph in [*result["sentences"], *(f"Note: {n}." for n in result["notes"]), f"Method. {result['method']}"]:
        lines += ["", paragraph]
    lines.append("")
    return "\n".join(lines)
