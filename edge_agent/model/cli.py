"""``senken model ...``: inspect the anomaly model and evaluate it on NAB-format data."""

from __future__ import annotations

import csv
from pathlib import Path

import click
import numpy as np

from senken_core.errors import ModelError

__all__ = ["model_group"]

DETECTORS = ("senken", "random", "windowed_gaussian")


@click.group(
    name="model",
    help="The on-device anomaly model: show it, run it on NAB-format data and score it.",
)
def model_group() -> None:
    pass


@model_group.command("info")
@click.option(
    "--model",
    "model_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Model file (default: the packaged anomaly-v2.tflite).",
)
def info_cmd(model_path: Path | None) -> None:
    """Print the model's path, sha256, size, window and threshold."""
    from senken_core.anomaly import AnomalyModel

    try:
        model = AnomalyModel.load(model_path)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
    p = model.params
    click.echo(f"path:      {model.path}")
    click.echo(f"sha256:    {model.sha256.hex()}")
    click.echo(f"size:      {model.size} bytes")
    click.echo(f"window:    {model.window}")
    click.echo(f"threshold: {model.threshold}")
    click.echo(
        f"params:    query={p.query} horizon={p.horizon} warmup={p.warmup} scale={p.scale} "
        f"suppress={p.suppress}"
    )


@model_group.command("nab")
@click.argument("data_dir", type=click.Path(path_type=Path, file_okay=False))
@click.argument("out_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--windows",
    "windows_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="NAB combined_windows.json (default: DATA_DIR/combined_windows.json if present).",
)
@click.option(
    "--model",
    "model_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Model file (default: the packaged anomaly-v2.tflite).",
)
@click.option(
    "--detector",
    type=click.Choice(DETECTORS),
    default="senken",
    show_default=True,
    help="Run the deployed model, or one of NAB's reference detectors.",
)
def nab_cmd(
    data_dir: Path, out_dir: Path, windows_file: Path | None, model_path: Path | None, detector: str
) -> None:
    """Run the model over every NAB CSV (timestamp,value) under DATA_DIR.

    Writes NAB results files OUT_DIR/<detector>/<category>/<detector>_<file>.csv with columns
    timestamp,value,anomaly_score,label, and prints the normalised NAB standard-profile score
    when the labelled windows are known. Values are scaled to integers by a per-file power of
    ten before scoring (see docs/model.md).
    """
    from edge_agent.model import nab

    try:
        if not data_dir.is_dir():
            raise nab.NabDataError(f"{data_dir}: data directory not found")
        if windows_file is None and (data_dir / "combined_windows.json").is_file():
            windows_file = data_dir / "combined_windows.json"
        windows = nab.load_windows(windows_file) if windows_file is not None else None
        csvs = sorted(data_dir.rglob("*.csv"))
        if not csvs:
            raise nab.NabDataError(f"{data_dir}: no .csv files found")
        run = (
            nab.senken_detector(model_path)
            if detector == "senken"
            else nab.reference_detector(detector)
        )
        results = []
        for k, series in enumerate(nab.find_series(data_dir, windows), 1):
            scores = run(series)
            _write_results(out_dir, detector, series, scores)
            results.append((series.name, scores, series.windows))
            click.echo(
                f"[{k}/{len(csvs)}] {series.name}: {len(scores)} rows, "
                f"{len(series.windows)} windows"
            )
    except (nab.NabDataError, ModelError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename}: {exc.strerror}") from None
    click.echo(f"results written to {out_dir / detector}")
    if windows is None:
        click.echo("no windows file: labels are 0 and no NAB score is computed")
        return
    res = nab.score_corpus(results)
    tp = sum(p.tp for p in res.per_file)
    fp = sum(p.fp for p in res.per_file)
    fn = sum(p.fn for p in res.per_file)
    click.echo(
        f"NAB standard profile: score {res.normalised:.2f} (threshold {res.threshold:.6f}; "
        f"raw {res.raw:.3f}, null {res.null:.1f}, perfect {res.perfect:.1f}; "
        f"windows detected {tp}, missed {fn}; false positives {fp})"
    )


def _write_results(out_dir: Path, detector: str, series: object, scores: np.ndarray) -> None:
    from edge_agent.model.nab import NabSeries

    assert isinstance(series, NabSeries)
    rel = Path(series.name)
    target = out_dir / detector / rel.parent / f"{detector}_{rel.name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    labels = series.labels
    with target.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["timestamp", "value", "anomaly_score", "label"])
        for ts, raw, score, lab in zip(series.timestamps, series.raw, scores, labels, strict=True):
            w.writerow([ts.strftime("%Y-%m-%d %H:%M:%S"), raw, f"{score:.6f}", int(lab)])
