"""`zhtune sweep`: a grid of experiments sharing one baseline, ending in a trade-off table.

Each grid point is an ordinary `zhtune run` in ``OUT/runs/<name>``, so finished points are skipped
and interrupted ones resume. The baseline is evaluated once, before any point starts, and every run
finds it in the shared cache. Where points run is the launcher's business (``sweep.launcher``):

  grid.py      the grid axes and one run config per point
  runner.py    run_sweep: the path every launcher shares (baseline, dispatch, retries, results)
  point.py     what a worker runs: one point, or the baseline (same function for every launcher)
  launcher.py  the Launcher interface;  local.py, ray_launcher.py, slurm.py implement it
  progress.py  the per-point lines and the progress bar
  results.py   results.csv/.md, the Pareto front, the trade-off and learning-forgetting charts
  evidence.py  the points' answers to analysis.grid: which setting is best (or that none is), factor effects
"""
from zhtune.sweep.grid import expand_grid, point_name, split_grid_overrides
from zhtune.sweep.results import pareto_front
from zhtune.sweep.runner import run_sweep

__all__ = ["expand_grid", "pareto_front", "point_name", "run_sweep", "split_grid_overrides"]
