"""Learning curves of a sweep: return vs environment steps, mean +- std across seeds per setting.

    python scripts/plot_runs.py multirun/2026-11-25/16-33-36 -o curves.png
    python scripts/plot_runs.py SWEEP_DIR --tag eval/mean_return --smooth 1

Reads the TensorBoard event files of every run dir under SWEEP_DIR (a dir holding
`.hydra/overrides.yaml`, at any depth). Runs whose overrides differ only in `seed` (see --ignore)
form one setting; the legend names only the overrides that vary across the sweep. Each run's curve
is smoothed (moving average over --smooth points), put on a common step grid (its last value held
up to the run's last logged step), and averaged where runs have data; a run that stopped early
(e.g. eval.stop_on_solved) drops out of the mean after its end.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

MAX_POINTS = 100_000  # the step grid: far more than a figure has pixels
MAX_PIXELS = 16_384  # per side of the image (W * dpi, H * dpi): an RGBA canvas of up to 1 GiB


def find_runs(sweep_dirs: list[Path]) -> list[tuple[Path, dict[str, str]]]:
    """(run_dir, {override key: value}) for every run dir under the given dirs, in path order."""
    from dqn_cli.sweep import read_overrides

    runs = []
    for sweep_dir in sweep_dirs:
        for overrides_file in sorted(sweep_dir.rglob(".hydra/overrides.yaml")):
            items = read_overrides(overrides_file)  # None (and a warning) when it cannot be read
            if items is None:
                continue
            overrides = {}
            for item in items:
                key, _, value = item.partition("=")
                overrides[key.lstrip("+~")] = value
            runs.append((overrides_file.parent.parent, overrides))
    return runs


def read_scalars(run_dir: Path, tag: str) -> tuple[np.ndarray, np.ndarray, float]:
    """All (step, value) points of `tag` in the run dir's event files (not its subdirs), and the run's
    last step (its last point of any scalar: the end of training, where the last episode's return
    still stands)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={SCALARS: 0})  # 0 = keep every point
    acc.Reload()
    tags = acc.Tags()["scalars"]
    if tag not in tags:
        return np.empty(0), np.empty(0), 0.0
    events = acc.Scalars(tag)
    end = max(acc.Scalars(t)[-1].step for t in tags)
    return np.array([e.step for e in events], dtype=float), np.array([e.value for e in events], dtype=float), end


def on_grid(grid: np.ndarray, steps: np.ndarray, values: np.ndarray, end: float) -> np.ndarray:
    """A run's curve at the grid's steps: interpolated between its points and its last value held up to
    `end` (a return stands until the next episode ends; without the hold the runs whose last episode
    ended earlier dropped out of the mean before the last step), NaN before its first point and after
    `end`, so runs only count where they have data."""
    return np.where((grid >= steps[0]) & (grid <= end), np.interp(grid, steps, values), np.nan)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` points at each point (fewer at the start)."""
    if window <= 1 or len(values) == 0:
        return values
    sums = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (sums[idx] - sums[lo]) / (idx - lo)


def group_runs(runs: list[tuple[Path, dict[str, str]]], ignore: list[str]) -> dict[str, list[Path]]:
    """{legend label: run dirs}; the label lists the overrides (minus `ignore`) that vary across runs."""
    keys = []
    for _, overrides in runs:
        keys += [k for k in overrides if k not in ignore and k not in keys]
    varying = [k for k in keys if len({o.get(k) for _, o in runs}) > 1]
    groups: dict[str, list[Path]] = {}
    for run_dir, overrides in runs:
        label = " ".join(f"{k}={overrides[k]}" for k in varying if k in overrides) or "all runs"
        groups.setdefault(label, []).append(run_dir)
    return groups


def plot(
    sweep_dirs: list[Path],
    output: Path,
    tag: str = "charts/episodic_return",
    ignore: tuple[str, ...] = ("seed",),
    smooth: int = 10,
    points: int = 200,
    size: tuple[float, float] = (8.0, 4.5),
    dpi: int = 100,
    title: str | None = None,
) -> dict[str, int]:
    """Draw the figure into `output` (size[0] * dpi by size[1] * dpi pixels); return runs per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    missing = [str(d) for d in sweep_dirs if not Path(d).exists()]
    if missing:
        where = ", ".join(missing)
        raise SystemExit(f"error: {where} does not exist (give a sweep dir, multirun/DATE/TIME, or run dirs)")
    runs = find_runs(sweep_dirs)
    if not runs:
        raise SystemExit(f"error: no run dirs (with .hydra/overrides.yaml) under {', '.join(map(str, sweep_dirs))}")
    curves: dict[str, list[tuple[np.ndarray, np.ndarray, float]]] = {}
    for label, run_dirs in group_runs(runs, list(ignore)).items():
        for run_dir in run_dirs:
            steps, values, end = read_scalars(run_dir, tag)
            if len(steps):
                curves.setdefault(label, []).append((steps, moving_average(values, smooth), end))
            else:
                print(f"warning: no {tag!r} scalars in {run_dir}; skipped", file=sys.stderr)
    if not curves:
        raise SystemExit(f"error: no run under {', '.join(map(str, sweep_dirs))} has {tag!r} scalars")

    fig, ax = plt.subplots(figsize=size, dpi=dpi, layout="constrained")
    last_step = max(end for runs_ in curves.values() for _, _, end in runs_)  # (end >= a run's last point)
    grid = np.linspace(0, last_step, points)
    counts = {}
    for label, runs_ in sorted(curves.items()):
        ys = np.array([on_grid(grid, *run) for run in runs_])
        have = ~np.isnan(ys).all(axis=0)
        mean = np.full(points, np.nan)
        std = np.full(points, np.nan)
        mean[have] = np.nanmean(ys[:, have], axis=0)
        std[have] = np.nanstd(ys[:, have], axis=0)
        (line,) = ax.plot(grid, mean, label=f"{label} (n={len(runs_)})", linewidth=1.5)
        ax.fill_between(grid, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
        counts[label] = len(runs_)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(tag + (f" (moving average of {smooth})" if smooth > 1 else ""))
    ax.set_title(title if title is not None else f"{sweep_dirs[0]}: mean \u00b1 std across seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(output, dpi=dpi)
    except OSError as e:  # a dir that cannot be made or written, a path that is a dir, a full disk
        why = "Not a directory" if isinstance(e, FileExistsError) else e.strerror or e  # mkdir met a file
        where = f": {e.filename}" if e.filename and str(e.filename) != str(output) else ""
        raise SystemExit(f"error: could not write {output} ({why}{where})") from None
    plt.close(fig)
    return counts


def number(kind: type, low: float, high: float = math.inf) -> Callable[[str], float]:
    """An argparse `type` for a finite `kind` (int or float) in [low, high]; anything else (a negative
    --smooth, a NaN --size, a word) is refused with argparse's error naming the range."""
    name = "an integer" if kind is int else "a number"
    allowed = f"{name} >= {low}" if high == math.inf else f"{name} in [{low}, {high}]"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be {allowed}, not {text!r}")
        return value

    return parse


def image_formats() -> list[str]:
    """The file suffixes matplotlib can write (png, pdf, svg, ...), without the dot."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dirs", nargs="+", type=Path, metavar="SWEEP_DIR", help="sweep (or run) dirs")
    parser.add_argument(
        "-o", "--output", type=Path, help="image to write, its format by its suffix (default: SWEEP_DIR/curves.png)"
    )
    parser.add_argument("--tag", default="charts/episodic_return", help="scalar tag (default: %(default)s)")
    parser.add_argument("--ignore", nargs="*", default=["seed"], help="override keys averaged over (default: seed)")
    parser.add_argument("--smooth", type=number(int, 1), default=10, help="moving-average window in points (1 = raw)")
    parser.add_argument("--points", type=number(int, 2, MAX_POINTS), default=200, help="points on the common step grid")
    parser.add_argument(
        "--size", type=number(float, 0.01), nargs=2, default=(8.0, 4.5), metavar=("W", "H"), help="inches"
    )
    parser.add_argument("--dpi", type=number(int, 1), default=100, help="pixels per inch (PNG is W*dpi x H*dpi)")
    parser.add_argument("--title", help="figure title (default: the sweep dir)")
    args = parser.parse_args(argv)
    output = args.output or args.sweep_dirs[0] / "curves.png"
    # checked before the event files are read; matplotlib would add .png to a name without a suffix
    if output.suffix[1:].lower() not in image_formats():
        parser.error(
            f"argument -o/--output: {str(output)!r} must end in an image format's suffix: "
            f"{', '.join('.' + f for f in image_formats())}"
        )
    pixels = [int(side * args.dpi) for side in args.size]  # as matplotlib sizes the canvas
    if not all(1 <= p <= MAX_PIXELS for p in pixels):
        parser.error(
            f"argument --size/--dpi: --size {args.size[0]:g} {args.size[1]:g} at --dpi {args.dpi} is a "
            f"{pixels[0]}x{pixels[1]} pixel image; each side (W*dpi, H*dpi) must be 1 to {MAX_PIXELS} pixels"
        )
    counts = plot(
        args.sweep_dirs, output, args.tag, tuple(args.ignore), args.smooth, args.points, tuple(args.size), args.dpi,
        args.title,
    )  # fmt: skip
    print(f"{output}: {', '.join(f'{label} (n={n})' for label, n in counts.items())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
