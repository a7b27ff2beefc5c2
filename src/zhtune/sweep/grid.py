"""The grid: axes from the config and the command line, one ordinary run config per point."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from zhtune.config import ExperimentConfig, apply_overrides, config_from_dict, config_to_dict
from zhtune.errors import UserError


@dataclass
class SweepPoint:
    name: str  # e.g. rank4-dropout0.05, also the folder under OUT/runs
    values: dict[str, Any]  # the grid axes' values at this point
    config: ExperimentConfig  # an ordinary `zhtune run` config writing to OUT/runs/<name>

    @property
    def out_dir(self) -> Path:
        return Path(self.config.output.dir)


def split_grid_overrides(items: list[str]) -> tuple[dict[str, list[Any]], list[str]]:
    """``lora.rank=4,8`` is a grid axis; ``train.max_steps=20`` or ``eval.benchmarks=[a,b]`` a plain
    override (commas inside brackets do not make an axis)."""
    grid: dict[str, list[Any]] = {}
    plain: list[str] = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"sweep: {item!r} is not of the form key.path=value[,value...]")
        if "," in value and not value.strip().startswith(("[", "{")):
            grid[key.strip()] = [yaml.safe_load(v) for v in value.split(",")]
        else:
            plain.append(item)
    return grid, plain


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def point_name(point: dict[str, Any]) -> str:
    """``{"lora.rank": 4, "lora.dropout": 0.05}`` -> ``rank4-dropout0.05``."""
    return "-".join(f"{k.rsplit('.', 1)[-1]}{v}" for k, v in point.items()) or "default"


def point_config(cfg: ExperimentConfig, point: dict[str, Any], out_root: Path) -> ExperimentConfig:
    raw = config_to_dict(cfg)
    raw["sweep"] = {}
    raw = apply_overrides(raw, [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                                for k, v in point.items()], "sweep grid")
    raw["name"] = f"{cfg.name}/{point_name(point)}"
    raw["output"]["dir"] = str(out_root / "runs" / point_name(point))
    return config_from_dict(raw, f"sweep point {point_name(point)}")


def with_grid(cfg: ExperimentConfig, extra_grid: dict[str, list[Any]] | None) -> ExperimentConfig:
    """``cfg`` with the command line's axes added to its ``sweep.grid``: the grid that runs (and that a
    registration is checked against)."""
    return cfg.model_copy(update={"sweep": cfg.sweep.model_copy(update={"grid": {**cfg.sweep.grid,
                                                                                 **(extra_grid or {})}})})


def grid_points(cfg: ExperimentConfig, extra_grid: dict[str, list[Any]] | None,
                out_root: Path) -> list[SweepPoint]:
    """The config's ``sweep.grid`` with the command line's axes added, one point per combination."""
    grid = with_grid(cfg, extra_grid).sweep.grid
    if not grid:
        raise UserError("sweep: no grid; give sweep.grid in the config or key=v1,v2 on the command line")
    return [SweepPoint(point_name(p), p, point_config(cfg, p, out_root)) for p in expand_grid(grid)]
