"""Parameter sweeps: sweep files -> points -> executor(generator) -> point files.

Re-exports only: :mod:`~laden.sweep.spec` (sweep files), :mod:`~laden.sweep.points`
(order, ids, seeds), :mod:`~laden.sweep.files` (point files),
:mod:`~laden.sweep.run` (the resumable run, the dry run) and
:mod:`~laden.sweep.dataset` (:class:`SweepDataset`). Generators share
:mod:`~laden.sweep.fields` (grids, seeded noise, text as ``uint8`` bytes).
"""

from laden.sweep.dataset import SweepDataset
from laden.sweep.points import Points, expand
from laden.sweep.run import INDEX, SweepResult, dry_run, run_sweep
from laden.sweep.spec import Block, SweepSpec, load_sweep, parse_sweep

__all__ = [
    "INDEX",
    "Block",
    "Points",
    "SweepDataset",
    "SweepResult",
    "SweepSpec",
    "dry_run",
    "example_path",
    "expand",
    "load_sweep",
    "parse_sweep",
    "run_sweep",
]


def example_path(name: str = "gaussian") -> str:
    """The path of a bundled example sweep file (``gaussian``: the seed's 75 points)."""
    from pathlib import Path

    return str(Path(__file__).parent / "examples" / f"{name}.yaml")
