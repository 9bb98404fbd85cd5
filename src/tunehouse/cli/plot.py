"""`tunehouse jobs plot`: the loss and token-accuracy curves of a job as a PNG (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SERIES = {
    "loss": [("train_loss", "train"), ("valid_loss", "validation"), ("full_valid_loss", "full validation")],
    "token accuracy": [
        ("train_mean_token_accuracy", "train"),
        ("valid_mean_token_accuracy", "validation"),
        ("full_valid_mean_token_accuracy", "full validation"),
    ],
}


def curves(metrics: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """key -> [(step, value)], from metrics events' data (any order), one value per step."""
    points: dict[str, dict[int, float]] = {}
    for data in metrics:
        step = data.get("step")
        if step is None:
            continue
        for key, value in data.items():
            if key not in ("step", "total_steps") and isinstance(value, int | float):
                points.setdefault(key, {})[int(step)] = float(value)
    return {key: sorted(by_step.items()) for key, by_step in points.items()}


def plot_curves(metrics: list[dict[str, Any]], output: Path, title: str) -> int:
    """Write the PNG; returns the number of training steps plotted."""
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError("`jobs plot` needs matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curves(metrics)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (name, series) in zip(axes, SERIES.items(), strict=True):
        for key, label in series:
            points = data.get(key)
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            if key.startswith("train"):
                ax.plot(steps, values, label=label, linewidth=1.2)
            elif key.startswith("full_valid"):
                ax.plot(steps, values, "o-", label=label, markersize=6)
            else:
                ax.plot(steps, values, ".-", label=label, markersize=4, linewidth=0.8)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return len(data.get("train_loss", []))
