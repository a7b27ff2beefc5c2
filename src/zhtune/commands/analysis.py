"""`zhtune compare`, `zhtune report`, `zhtune tradeoff` and `zhtune plan`: the forgetting analysis on
evaluation folders."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from zhtune.artifacts import write_resolved_settings
from zhtune.config import config_field

console = Console()
err_console = Console(stderr=True)



def _analysis_help(name: str) -> str:
    """The help of an analysis option (--forgetting-margin, ...) is the config field's description
    (typer shows the default itself)."""
    return config_field(f"analysis.{name}").description


def _analysis_default(name: str) -> Any:
    return config_field(f"analysis.{name}").default


def _ci(f: dict) -> str:
    from zhtune.analysis.formatting import num, signed

    return f"{signed(f['change_points'])} [{num(f['ci_low'])}, {num(f['ci_high'])}]"


def _p(p: float) -> str:
    from zhtune.analysis.formatting import p_cell

    return p_cell(p)


def _verdict(f: dict) -> str:
    color = {"forgot": "red", "declined": "red", "improved": "green"}.get(f["verdict"])
    return f"[{color}]{f['verdict']}[/]" if color else f["verdict"]


def _mdc(f: dict) -> str:
    return "–" if f.get("min_detectable_change") is None else f"{f['min_detectable_change']:.1f}"


def print_comparison(cmp: dict) -> None:
    from zhtune.analysis.formatting import benchmark_name, pct
    from zhtune.analysis.sentences import headline_sentences

    table = Table(title=f"{cmp['tuned']['label']} vs {cmp['base']['label']}  (change in points, 95% CI)")
    for col in ("Benchmark", "n", "Base %", "Tuned %", "Change [95% CI]", "p", "Verdict", "Margin", "MDC"):
        table.add_column(col, justify="left" if col in ("Benchmark", "Verdict") else "right")
    for bench, g in cmp["benchmarks"].items():
        table.add_row(benchmark_name(bench), f"{g['n']:,}", pct(g["base_accuracy"]), pct(g["tuned_accuracy"]),
                      _ci(g), _p(g["p_value"]), _verdict(g), f"{g['margin']:g}", _mdc(g))
    for key in ("chinese_gain", "english_forgetting"):
        f = cmp.get(key)
        if f:
            table.add_row(f"[bold]{f.get('name', key)}[/]", f"{f['n']:,}", pct(f["base_accuracy"]), pct(f["tuned_accuracy"]),
                          _ci(f), _p(f["p_value"]), _verdict(f), f"{f['margin']:g}", _mdc(f))
    console.print(table)
    for sentence in headline_sentences(cmp)[:2]:
        console.print(f"  {sentence}")
    for note in cmp.get("notes", []):
        err_console.print(f"[yellow]note:[/] {note}")


def print_combined(comparisons: list[dict]) -> None:
    table = Table(title="All runs (points, 95% CI; forgetting = base − tuned)")
    for col in ("Run", "Chinese change", "Verdict", "English forgetting", "Verdict", "Benchmarks that fell"):
        table.add_column(col, justify="right" if col.startswith(("Chinese", "English")) else "left")
    for cmp in comparisons:
        zh, en = cmp.get("chinese_gain"), cmp.get("english_forgetting")
        table.add_row(cmp["tuned"]["label"], _ci(zh) if zh else "–", _verdict(zh) if zh else "–",
                      _ci(en) if en else "–", _verdict(en) if en else "–",
                      ", ".join(cmp["significant_forgetting"]))
    console.print(table)


def _load_comparisons(paths: list[Path]) -> list[dict]:
    """comparison.json files, or `zhtune compare` output folders holding them."""
    from zhtune.errors import UserError
    from zhtune.io import read_json

    out = []
    for p in paths:
        files = ([p] if p.is_file() else [p / "comparison.json"] if (p / "comparison.json").is_file()
                 else sorted(p.glob("*/comparison.json")))
        if not files:
            raise UserError(f"{p}: no comparison.json (run zhtune compare first)")
        out += [read_json(f) for f in files]
    return out


# The analysis options compare, report and tradeoff share: defaults and help from AnalysisConfig.
_FORGETTING_MARGIN = typer.Option(_analysis_default("forgetting_margin"), "--forgetting-margin", min=0.0, max=100.0,
                                  help=_analysis_help("forgetting_margin"))
_GAIN_MARGIN = typer.Option(_analysis_default("gain_margin"), "--gain-margin", min=0.0, max=100.0,
                            help=_analysis_help("gain_margin"))
_TOLERANCE = typer.Option(_analysis_default("english_tolerance"), "--tolerance", min=0.0,
                         help=_analysis_help("english_tolerance"))
_HEADLINE_FORMULATION = typer.Option(_analysis_default("headline_formulation"), "--headline-formulation",
                                     help=_analysis_help("headline_formulation"))


def _analysis(**settings: Any):
    """The one AnalysisConfig the analysis functions take: the schema's defaults, then the command's
    options, resolved as every command resolves its config."""
    from zhtune.config import resolve_config

    return resolve_config(None, {f"analysis.{k}": v for k, v in settings.items()}).analysis


def register(app: typer.Typer) -> None:
    # Long only because it declares this area's commands: their typer options are the signature,
    # and each body parses, calls one library function and prints.
    @app.command("compare")
    def compare_cmd(
        dirs: List[Path] = typer.Argument(..., help="BASE_DIR TUNED_DIR [MORE ...]: evaluation folders "
                                          "(single-run, multi-run with index.json, or MULTI/<label>)."),
        output_dir: Path = typer.Option(Path("comparison"), "--output-dir", "--output_dir",
                                        help="Where comparison.json goes (one subfolder per run when several)."),
        forgetting_margin: float = _FORGETTING_MARGIN,
        gain_margin: float = _GAIN_MARGIN,
        headline_formulation: str = _HEADLINE_FORMULATION,
    ):
        """Paired comparison of a base evaluation with one or more tuned ones: per benchmark, category and
        subject, the change with a 95% score interval, McNemar's exact p (and Benjamini-Hochberg q for subjects
        and categories), a verdict against the margin and the minimum detectable change; Chinese gain and
        English forgetting with intervals that allow for subject clustering. Refuses runs whose settings or
        questions differ."""
        from zhtune.analysis.forgetting import compare_many, safe_name, write_comparison
        from zhtune.errors import UserError
        from zhtune.io import atomic_write_json

        if len(dirs) < 2:
            raise UserError("compare needs BASE_DIR and at least one TUNED_DIR")
        with console.status("comparing evaluations"):
            comparisons = compare_many(dirs[0], dirs[1:], _analysis(
                forgetting_margin=forgetting_margin, gain_margin=gain_margin, headline_formulation=headline_formulation))
        dicts = [c.to_dict() for c in comparisons]
        if len(comparisons) == 1:
            written = [write_comparison(comparisons[0], output_dir / "comparison.json")]
        else:
            written = [write_comparison(c, output_dir / safe_name(c.label) / "comparison.json") for c in comparisons]
            atomic_write_json(output_dir / "comparisons.json", [
                {"label": d["tuned"]["label"], "dir": d["tuned"]["dir"], "comparison": str(p.relative_to(output_dir)),
                 "chinese_gain": d["chinese_gain"], "english_forgetting": d["english_forgetting"],
                 "significant_forgetting": d["significant_forgetting"]} for d, p in zip(dicts, written, strict=True)])
        write_resolved_settings(output_dir, "compare", base=dirs[0], tuned=[str(d) for d in dirs[1:]],
                        forgetting_margin=forgetting_margin, gain_margin=gain_margin,
                        headline_formulation=headline_formulation)
        for d in dicts:
            print_comparison(d)
        if len(dicts) > 1:
            print_combined(dicts)
        for p in written:
            console.print(f"[bold green]wrote[/] {p}")

    @app.command("report")
    def report_cmd(
        base: Optional[Path] = typer.Option(None, "--base", help="Base model's evaluation folder."),
        tuned: Optional[List[Path]] = typer.Option(None, "--tuned", help="Tuned evaluation folder (repeatable)."),
        comparison: Optional[List[Path]] = typer.Option(
            None, "--comparison", help="Instead of --base/--tuned: comparison.json files or zhtune compare folders."),
        train_dir: Optional[Path] = typer.Option(None, "--train-dir", "--train_dir",
                                                 help="Training output folder: adds loss and probe curves."),
        scale_dir: Optional[Path] = typer.Option(None, "--scale-dir", "--scale_dir",
                                                 help="Multi-run evaluation of one adapter at several scales: "
                                                      "adds the scale trade-off."),
        tolerance: float = _TOLERANCE,
        output_dir: Path = typer.Option(Path("report"), "--output-dir", "--output_dir",
                                        help="Where report.html, report.md, report.json and the charts go."),
        title: str = typer.Option("zhtune report", "--title", help="Report title."),
        screenshot: Optional[Path] = typer.Option(None, "--screenshot",
                                                  help="Also open report.html in headless Chromium, check every "
                                                       "image loads and save a PNG screenshot here."),
        forgetting_margin: float = _FORGETTING_MARGIN,
        gain_margin: float = _GAIN_MARGIN,
        headline_formulation: str = _HEADLINE_FORMULATION,
    ):
        """One self-contained report.html (plus report.md and report.json): three sentences with the answer,
        tables, charts, settings and how the statistics were computed."""
        from zhtune.analysis.report import build_report, check_in_browser, report_from_evaluations
        from zhtune.errors import UserError

        comparisons = _load_comparisons(comparison) if comparison else None
        if comparisons is None and (base is None or not tuned):
            raise UserError("report: give --base and --tuned evaluation folders, or --comparison files")
        analysis = _analysis(forgetting_margin=forgetting_margin, gain_margin=gain_margin,
                             headline_formulation=headline_formulation, english_tolerance=tolerance)
        with console.status("building report") as status:
            common = dict(output_dir=output_dir, train_dir=train_dir, scale_dir=scale_dir, title=title,
                          analysis=analysis, progress=lambda msg: status.update(f"building report: {msg}"))
            paths = (build_report(comparisons=comparisons, **common) if comparisons is not None
                     else report_from_evaluations(base, tuned, **common))
        write_resolved_settings(output_dir, "report", base=base, tuned=[str(t) for t in tuned or []],
                        comparison=[str(c) for c in comparison or []], train_dir=train_dir, scale_dir=scale_dir,
                        tolerance=tolerance, title=title, forgetting_margin=forgetting_margin,
                        gain_margin=gain_margin, headline_formulation=headline_formulation)
        from zhtune.io import read_json

        for sentence in read_json(paths["json"])["headline"]:
            console.print(f"  {sentence}")
        if screenshot is not None:
            with console.status("checking the report in headless Chromium"):
                check = check_in_browser(paths["html"], screenshot)
            if check.broken:
                raise UserError(f"{paths['html']}: {check.broken} of {check.images} images did not load")
            console.print(f"browser check: {check.images} images, none broken; screenshot {check.screenshot}")
        console.print(f"[bold green]report:[/] {paths['html']}")

    @app.command("seeds")
    def seeds_cmd(
        comparisons: List[Path] = typer.Argument(..., help="One comparison per training seed: comparison.json "
                                                 "files, zhtune compare folders or zhtune run folders (the "
                                                 "first is the one the others are compared with)."),
        seed: Optional[List[str]] = typer.Option(None, "--seed", help="The seeds' names, in the same order "
                                                 "(repeatable; default: the tuned evaluation folders)."),
        output_dir: Path = typer.Option(Path("seeds"), "--output-dir", "--output_dir",
                                        help="Where seeds.json and seeds.md go."),
    ):
        """Seed-to-seed spread of every primary figure across runs that differ only in train.seed, beside
        the question-level interval, and each seed compared with the first on the same questions."""
        from zhtune.analysis.formatting import num, signed
        from zhtune.analysis.seeds import seed_spread, write_seed_spread

        result = seed_spread(_load_comparisons(comparisons), seed)
        paths = write_seed_spread(result, output_dir)
        write_resolved_settings(output_dir, "seeds", comparisons=[str(c) for c in comparisons], seed=seed)
        table = Table(title="Seed-to-seed spread (points; bits: relative change, %)")
        for col in ("Figure", *(f"seed {s}" for s in result["seeds"]), "Range", "One run's ±95%", "Seeds, same questions: p"):
            table.add_column(col, justify="left" if col == "Figure" else "right")
        for f in result["figures"]:
            table.add_row(f["name"], *(signed(s["estimate"]) for s in f["seeds"]), num(f["range"]),
                          f"±{num(f['question_half_width'])}",
                          ", ".join(_p(b["p"]) for b in f["between_seeds"]) or "–")
        console.print(table)
        for sentence in result["sentences"]:
            console.print(f"  {sentence}")
        for note in result["notes"]:
            err_console.print(f"[yellow]note:[/] {note}")
        console.print(f"[bold green]wrote[/] {paths['json']}  {paths['md']}")

    @app.command("tradeoff")
    def tradeoff_cmd(
        scale_dir: Path = typer.Argument(..., help="Multi-run evaluation folder: the base and one adapter at "
                                                   "several scales (labels like adapter@scale-0.25)."),
        tolerance: float = _TOLERANCE,
        base: Optional[Path] = typer.Option(None, "--base", help="Base evaluation folder, when the scale folder "
                                                                 "has no base run."),
        adapter: Optional[str] = typer.Option(None, "--adapter", help="Which adapter, when the folder holds several."),
        output_dir: Path = typer.Option(Path("tradeoff"), "--output-dir", "--output_dir",
                                        help="Where tradeoff.json and the chart go."),
        forgetting_margin: float = _FORGETTING_MARGIN,
        gain_margin: float = _GAIN_MARGIN,
    ):
        """Chinese gain and English forgetting at every adapter scale, and the scale that gains the most
        Chinese while keeping English forgetting within --tolerance points."""
        from zhtune.analysis.scale import analyze_tradeoff, write_tradeoff

        with console.status("comparing every scale with the base"):
            result = analyze_tradeoff(scale_dir, base_dir=base, adapter=adapter, analysis=_analysis(
                forgetting_margin=forgetting_margin, gain_margin=gain_margin, english_tolerance=tolerance))
            paths = write_tradeoff(result, output_dir)
        write_resolved_settings(output_dir, "tradeoff", scale_dir=scale_dir, tolerance=tolerance, base=base,
                        adapter=adapter, forgetting_margin=forgetting_margin, gain_margin=gain_margin)
        table = Table(title=f"Adapter scale trade-off (tolerance {tolerance:g} points)")
        for col in ("Scale", "Chinese gain [95% CI]", "p", "English forgetting [95% CI]", "p", "Within"):
            table.add_column(col, justify="right")
        for p in result.points:
            mark = "→ " if result.recommended is p else ""
            table.add_row(f"{mark}{p.scale:g}", _ci(p.gain), _p(p.gain["p_value"]), _ci(p.forgetting),
                          _p(p.forgetting["p_value"]), "yes" if p.forgetting["change_points"] <= tolerance else "no")
        console.print(table)
        for line in result.reasoning:
            console.print(f"  {line}")
        console.print(f"[bold green]wrote[/] {paths['json']}  {paths['png']}")

    @app.command("plan")
    def plan_cmd(
        from_dir: Path = typer.Option(..., "--from", help="A pilot evaluation folder (its base run when it "
                                                          "holds several)."),
        tuned: Optional[Path] = typer.Option(None, "--tuned", help="The pilot's tuned evaluation on the same "
                                                                   "questions: the discordance is measured."),
        change: float = typer.Option(2.0, "--change", min=0.01, max=100.0,
                                     help="The change to detect, in points of accuracy."),
        discordance: Optional[float] = typer.Option(
            None, "--discordance", min=0.0001, max=1.0,
            help="Assumed share of questions whose outcome differs between the runs (e.g. 0.15), "
                 "for every benchmark, when no --tuned pilot exists."),
        design_effect: Optional[float] = typer.Option(
            None, "--design-effect", min=1.0,
            help="Assumed design effect of the pooled figures (questions of one subject changing together), "
                 "when no --tuned pilot measures it; 1 (independent questions) when not given."),
        output_dir: Optional[Path] = typer.Option(None, "--output-dir", "--output_dir",
                                                  help="Also write plan.json here."),
    ):
        """How many questions each benchmark needs to detect a change of --change points (80% power,
        two-sided alpha 0.05, McNemar's test), from a pilot run. The discordance comes from a --tuned pilot,
        from --discordance, or else is assumed from the base accuracy p as 2p(1 - p), which fine-tuning
        rarely exceeds."""
        from zhtune.analysis.formatting import benchmark_name, pct
        from zhtune.analysis.planning import plan_questions
        from zhtune.io import atomic_write_json

        plan = plan_questions(from_dir, tuned_dir=tuned, change=change, discordance=discordance,
                              design_effect=design_effect)
        table = Table(title=f"Questions needed to detect a change of {change:g} points (80% power, α = 0.05)")
        for col in ("Benchmark", "Pilot n", "Base %", "Discordance", "MDC at pilot n", "Questions needed"):
            table.add_column(col, justify="left" if col == "Benchmark" else "right")
        for row in plan["benchmarks"] + plan["pooled"]:
            mdc = row["min_detectable_change_at_pilot_n"]
            needed = row["questions_needed"]
            name = (benchmark_name(row["benchmark"]) if "language" not in row else
                    f"pooled {' + '.join(map(benchmark_name, row['benchmarks']))} (design effect "
                    f"{row['design_effect']:.2f}, {row['design_effect_source']})")
            table.add_row(name, f"{row['pilot_n']:,}", pct(row["base_accuracy"]),
                          f"{100 * row['discordance']:.1f}%", "–" if mdc is None else f"{mdc:.1f}",
                          "–" if needed is None else f"{needed:,}")
        console.print(table)
        console.print(f"  Discordance: {plan['discordance_source']}.")
        if output_dir is not None:
            written = atomic_write_json(output_dir / "plan.json", plan)
            write_resolved_settings(output_dir, "plan", pilot=from_dir, tuned=tuned, change=change,
                            discordance=discordance, design_effect=design_effect)
            console.print(f"[bold green]wrote[/] {written}")
