"""Pre-registration: the design of a study written down, hashed and committed before it runs.

``zhtune register CONFIG`` writes ``<config>.registration.json`` beside the config: the hash of the
design (the resolved config without the settings that cannot change a result: where outputs go,
where the data folder is, the device, batch sizes), the config file's checksum, the git commit and
whether the tree was dirty, the time, and the design figures (questions per benchmark and per pooled
figure, the change each detects with 80% power, and the probability of showing "no change beyond
the margin" when nothing changes, at a range of discordances, with a design effect for pooled
figures). The registration file is then committed; a later ``zhtune run CONFIG`` finds it, refuses
to run a design that differs from it (``--ignore-registration`` runs anyway, loudly, and records the
difference), and records what it checked in ``experiment.json``; the report cites it.

A run may differ from the registered config only along its sweep grid (``sweep.grid``), within the
registered values: a registered grid ``{"train.seed": [42, 7]}`` registers both training seeds.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from zhtune.artifacts import fingerprint, provenance, run_git, sha256_file, utc_timestamp
from zhtune.config import ExperimentConfig, config_to_dict
from zhtune.errors import UserError
from zhtune.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

SUFFIX = ".registration.json"
# Settings that cannot change a result (the baseline fingerprint leaves out the same eval ones).
NOT_DESIGN = ("output", "data.data_dir", "model.device", "train.report_to", "eval.batch_size",
              "eval.batch_tokens", "sweep.launcher", "sweep.workers", "sweep.devices", "sweep.address",
              "sweep.gpus_per_point", "sweep.cpus_per_point", "sweep.max_retries", "sweep.slurm")
DISCORDANCES = (0.05, 0.10, 0.15)  # shares of questions whose outcome changes, for the design figures
DESIGN_EFFECT = 1.15  # pooled figures: the CPU study measured 1.14 (Chinese) and 1.10 (English)
ALPHA, POWER = 0.05, 0.80


def registration_path(config_file: str | Path) -> Path:
    """``configs/qwen-study.yaml`` -> ``configs/qwen-study.registration.json``."""
    p = Path(config_file)
    return p.with_name(p.stem + SUFFIX)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """A config as dotted keys (``{"lora.rank": 8, ...}``); ``sweep.grid`` stays one value."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key != "sweep.grid":
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def design(cfg: ExperimentConfig) -> dict[str, Any]:
    """The settings that make up the design, flat (``{"lora.rank": 8, ...}``)."""
    flat = flatten(config_to_dict(cfg))
    return {k: v for k, v in flat.items() if not any(k == n or k.startswith(n + ".") for n in NOT_DESIGN)}


def design_hash(cfg: ExperimentConfig) -> str:
    return fingerprint("design", design(cfg))


# ----------------------------------------------------------------------------- design figures
def equivalence_probability(n: float, discordance: float, margin_points: float, *,
                            design_effect: float = 1.0, alpha: float = ALPHA) -> float:
    """The probability that the one-sided (1 - alpha) bound excludes a change of ``margin_points``
    when nothing changes: Phi(margin / se - z_(1-alpha)), se = sqrt(discordance x design effect / n)
    (the normal approximation to the paired difference; the CPU study's design used it)."""
    from scipy.stats import norm

    se = math.sqrt(discordance * design_effect / n)
    return float(norm.cdf(margin_points / 100 / se - norm.ppf(1 - alpha)))


def design_figures(cfg: ExperimentConfig, data_dir: str | Path | None, *,
                   discordances: tuple[float, ...] = DISCORDANCES, design_effect: float = DESIGN_EFFECT) -> dict:
    """Per benchmark and per pooled language figure of ``cfg``'s evaluation: questions, and at each
    discordance the change detected with 80% power (two-sided alpha 0.05, McNemar, Connor 1987),
    the probability of "no change beyond the margin" when nothing changes, and the questions the
    margin would need. Pooled figures carry the design effect; single benchmarks none."""
    from zhtune.analysis.stats import min_detectable_change, questions_needed
    from zhtune.data.specs import load_spec
    from zhtune.eval.suite import load_questions

    counts = {b: len(qs) for b, qs in load_questions(cfg.eval, data_dir).items()}
    margins = {"zh": cfg.analysis.gain_margin, "en": cfg.analysis.forgetting_margin}
    groups: dict[str, list[str]] = {}
    for b in counts:
        groups.setdefault(load_spec(b).language, []).append(b)

    def figure(n: int, margin: float, deff: float) -> dict:
        rows = []
        for psi in discordances:
            mdc = min_detectable_change(n / deff, psi, alpha=ALPHA, power=POWER)
            needed = questions_needed(margin / 100, psi, alpha=ALPHA, power=POWER)
            rows.append({"discordance": psi,
                         "min_detectable_change": None if mdc is None else round(100 * mdc, 2),
                         "p_no_change_beyond_margin": round(equivalence_probability(
                             n, psi, margin, design_effect=deff), 3),
                         "questions_for_margin": None if needed is None else math.ceil(needed * deff)})
        return {"n": n, "margin": margin, "design_effect": deff, "at_discordance": rows}

    pooled = {lang: {"benchmarks": bs, **figure(sum(counts[b] for b in bs), margins.get(lang, 2.0),
                                                design_effect)}
              for lang, bs in groups.items()}
    per_benchmark = {b: figure(n, margins.get(load_spec(b).language, 2.0), 1.0) for b, n in counts.items()}
    return {"pooled": pooled, "benchmarks": per_benchmark, "alpha": ALPHA, "power": POWER,
            "formulation": cfg.eval.formulation, "headline_formulation": cfg.analysis.headline_formulation,
            "method": "McNemar's test, normal approximation (Connor 1987), n divided by the design effect for "
                      "pooled figures; P(no change beyond the margin | no change) = Phi(margin / se - z_0.95), "
                      "se = sqrt(discordance x design effect / n)"}


# ----------------------------------------------------------------------------- register / check
def _file_in_git(path: Path) -> dict:
    """Whether ``path`` is committed unchanged, and the commit (and its time) that last changed it."""
    folder, name = path.parent, path.name
    if run_git(["ls-files", "--error-unmatch", name], folder) is None:
        return {"committed": False, "commit": None, "commit_time": None}
    clean = run_git(["status", "--porcelain", "--", name], folder) == ""
    last = run_git(["log", "-1", "--format=%H %cI", "--", name], folder) or ""
    commit, _, when = last.partition(" ")
    return {"committed": clean, "commit": commit or None, "commit_time": when or None}


def register(cfg: ExperimentConfig, config_file: str | Path, *, data_dir: str | Path | None = None,
             overrides: list[str] | None = None, output: str | Path | None = None,
             allow_uncommitted: bool = False) -> tuple[Path, dict]:
    """Write the registration of ``cfg`` (read from ``config_file``); returns (path, record).
    The config file must be committed unchanged unless ``allow_uncommitted``."""
    config_file = Path(config_file)
    state = _file_in_git(config_file)
    if not state["committed"] and not allow_uncommitted:
        raise UserError(f"{config_file}: not committed, or changed since its last commit; commit the design "
                        f"first (a registration names the commit that holds it), or pass --allow-uncommitted")
    record = {
        "registration_version": 1,
        "name": cfg.name,
        "config_file": str(config_file),
        "config_sha256": sha256_file(config_file),
        "config_commit": state["commit"],
        "overrides": list(overrides or []),
        "design_hash": design_hash(cfg),
        "design": design(cfg),
        "registered": utc_timestamp(),
        "provenance": provenance(),
        "design_figures": design_figures(cfg, data_dir),
    }
    path = Path(output) if output else registration_path(config_file)
    atomic_write_json(path, record)
    return path, record


def _before(earlier: str | None, later: str) -> bool | None:
    from datetime import datetime

    if not earlier:
        return None
    return datetime.fromisoformat(earlier.replace("Z", "+00:00")) <= datetime.fromisoformat(later.replace("Z", "+00:00"))


def _allowed_variant(registered: dict, current: dict, key: str) -> bool:
    grid = registered.get("sweep.grid") or {}
    return key in grid and current.get(key) in grid[key]


def check_registration(cfg: ExperimentConfig, config_file: str | Path | None, *,
                       registration_file: str | Path | None = None, ignore_mismatch: bool = False) -> dict:
    """What ``zhtune run`` records about the registration of ``cfg``: ``{"status": "unregistered"}``
    when there is none, else the registration's hash, time and commits, whether it is committed,
    the differences (dotted keys) and ``status`` "matches" | "changed". A changed design is a
    UserError unless ``ignore_mismatch``, which logs it as an error and runs."""
    path = Path(registration_file) if registration_file else (
        registration_path(config_file) if config_file is not None else None)
    if path is None or not path.is_file():
        if registration_file:
            raise UserError(f"{registration_file}: no such registration file")
        return {"status": "unregistered", "checked": utc_timestamp()}
    try:
        reg = read_json(path)
        registered = reg["design"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a registration file ({err})") from None
    current = design(cfg)
    differences = sorted(k for k in set(registered) | set(current)
                         if registered.get(k) != current.get(k) and not _allowed_variant(registered, current, k))
    variant = {k: current.get(k) for k in sorted(set(registered) | set(current))
               if registered.get(k) != current.get(k) and k not in differences}
    git = _file_in_git(path)
    record = {"status": "changed" if differences else "matches", "file": str(path),
              "design_hash": reg.get("design_hash"), "run_design_hash": design_hash(cfg),
              "registered": reg.get("registered"), "registered_at_commit": (reg.get("provenance") or {}).get("git_commit"),
              "registration_committed": git["committed"], "registration_commit": git["commit"],
              "registration_commit_time": git["commit_time"], "differences": differences,
              "variant": variant, "checked": utc_timestamp()}
    record["committed_before_check"] = _before(git["commit_time"], record["checked"]) if git["committed"] else False
    if differences:
        shown = ", ".join(f"{k}: {registered.get(k)!r} -> {current.get(k)!r}" for k in differences[:6])
        more = f" (and {len(differences) - 6} more)" if len(differences) > 6 else ""
        message = f"the design differs from its registration {path}: {shown}{more}"
        if not ignore_mismatch:
            raise UserError(message + "; register the new design (zhtune register) or pass --ignore-registration")
        log.error("NOT AS REGISTERED: %s; running anyway (--ignore-registration), recorded in experiment.json",
                  message)
    if not git["committed"]:
        log.warning("the registration %s is not committed (or changed since): commit it before the launch, "
                    "or the run cannot show that its design came first", path)
    return record


def registration_sentence(registration: dict | None) -> str:
    """How a report cites the registration it was checked against (empty without one)."""
    if not registration:
        return ""
    if registration.get("status") == "unregistered":
        return "The design was not pre-registered."
    commit = registration.get("registration_commit")
    where = (f"committed in {commit[:7]} at {registration['registration_commit_time']}, before this run "
             f"started at {registration.get('checked')}" if commit and registration.get("committed_before_check")
             else "NOT committed before this run started")
    status = ("this run's design matches it" if registration["status"] == "matches"
              else "this run's design DIFFERS from it: " + ", ".join(registration.get("differences", [])))
    variant = "".join(f"; registered variant {k} = {v}" for k, v in (registration.get("variant") or {}).items())
    return (f"Pre-registered design {registration.get('design_hash')} ({registration.get('file')}, registered "
            f"{registration.get('registered')}, {where}); {status}{variant}.")


def provenance_note(prov: dict, registration: dict | None = None) -> str:
    """A report's footer on the code that made it (artifacts.provenance) and its registration."""
    commit = prov.get("git_commit")
    code = (f"Code: zhtune {prov.get('zhtune_version')}, commit {commit[:7]}"
            f"{' with uncommitted changes' if prov.get('git_dirty') else ''}." if commit
            else f"Code: zhtune {prov.get('zhtune_version')}, not from a git checkout.")
    return code + (" " + registration_sentence(registration) if registration else "")
