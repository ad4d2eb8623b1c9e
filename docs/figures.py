"""Draws ``docs/images/data_flow.png``, the README's data-flow diagram, with matplotlib only.

    python docs/figures.py [--output docs/images/data_flow.png]

The TF Serving versions in it are read from ``serving/docker-compose.yml``, their one owner.
(The learning-curve and GAUC pictures come from a run of notebooks/muse_quickstart.ipynb; see the
README.)
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "serving" / "docker-compose.yml"
WIDTH, HEIGHT = 3.3, 1.25  # box size in data units
COLOURS = {"data": "#dbe9f6", "train": "#e3f1df", "serve": "#fbe5d6"}

# (x, y, colour, title, detail lines): three rows, read left to right, top to bottom.
BOXES = {
    "parquet": (0.0, 6.0, "data", "Taobao-MM Parquet",
                ["6 tables, raw int64 IDs", "(or pipelines.synthetic)"]),
    "convert": (4.2, 6.0, "data", "pipelines.taobao_mm",
                ["scan -> vocab -> items -> shards", "parallel, resumable, bounded memory"]),
    "converted": (8.4, 6.0, "data", "converted dataset",
                  ["train|test/part-*.tfrecord.gz", "vocab/*.npy, multimodal_table.npy,",
                   "manifest.json"]),
    "input": (0.0, 3.2, "train", "muse_tf.data.reader.make_dataset",
              ["tf.data: one record per user", "-> (features (B,)/(B, L), label)"]),
    "model": (4.2, 3.2, "train", "MuseModel + model.fit",
              ["GSU top-K -> SimTier + SA-TA -> tower", "one device / Mirrored / MultiWorker"]),
    "run": (8.4, 3.2, "train", "run directory",
            ["config.yaml, final weights, backup", "history.csv, eval_metrics.json"]),
    "export": (0.0, 0.4, "serve", "muse_tf.export: SavedModel",
               ["raw IDs in; vocab assets, int8 table", "serving_default + rank"]),
    "server": (4.2, 0.4, "serve", "TF Serving", ["(or serving.server locally)", "gRPC :8500, REST :8501"]),
    "client": (8.4, 0.4, "serve", "serving.client",
               ["GrpcClient / RestClient", "-> probability, logit"]),
}
ARROWS = [
    ("parquet", "convert", ""),
    ("convert", "converted", ""),
    ("converted", "input", "shards"),
    ("input", "model", ""),
    ("model", "run", ""),
    ("run", "export", "final weights + vocab"),
    ("export", "server", "muse/<N>/"),
    ("client", "server", "Predict"),
]


def serving_images(compose: Path = COMPOSE) -> list[tuple[str, str]]:
    """(TensorFlow that wrote the export, tensorflow/serving image) pairs, default image first, as
    ``serving/docker-compose.yml`` states them ("TensorFlow 2.16 exports -> 2.16.1 ...")."""
    text = compose.read_text()
    default = re.search(r"tensorflow/serving:\$\{TF_SERVING_VERSION:-([\w.]+)\}", text)
    prose = re.sub(r"\n\s*#\s*", " ", text)  # comment lines joined: a sentence may wrap
    pairs = re.findall(r"TensorFlow (\d+\.\d+) exports -> (\d+\.\d+\.\d+)", prose)
    if not default or not pairs or default.group(1) not in {image for _, image in pairs}:
        raise ValueError(f"{compose}: expected the image 'tensorflow/serving:${{TF_SERVING_VERSION:-X}}' "
                         "and comments 'TensorFlow A.B exports -> X' naming it.")
    return sorted(pairs, key=lambda pair: pair[1] != default.group(1))


def _boxes() -> dict[str, tuple]:
    """``BOXES`` with the serving box's title and versions filled in from the compose file."""
    images = serving_images()
    x, y, kind, title, lines = BOXES["server"]
    versions = [f"{image} for TF {tf} exports" for tf, image in images]
    return {**BOXES, "server": (x, y, kind, title, [*versions, *lines])}


def _anchor(name: str, towards: str) -> tuple[float, float]:
    """The point on box ``name``'s edge facing box ``towards``."""
    x, y = BOXES[name][:2]
    tx, ty = BOXES[towards][:2]
    if abs(ty - y) < 1e-6:
        return (x + WIDTH, y + HEIGHT / 2) if tx > x else (x, y + HEIGHT / 2)
    return (x + WIDTH / 2, y) if ty < y else (x + WIDTH / 2, y + HEIGHT)


def draw(path: Path) -> None:
    """Renders the diagram to ``path`` (PNG)."""
    fig, axis = plt.subplots(figsize=(11.5, 6.2))
    for x, y, kind, title, lines in _boxes().values():
        axis.add_patch(FancyBboxPatch((x, y), WIDTH, HEIGHT, boxstyle="round,pad=0.06",
                                      facecolor=COLOURS[kind], edgecolor="#444444", linewidth=1.0))
        axis.text(x + WIDTH / 2, y + HEIGHT - 0.25, title, ha="center", va="center",
                  fontsize=10.5, fontweight="bold", family="monospace")
        axis.text(x + WIDTH / 2, y + HEIGHT / 2 - 0.22, "\n".join(lines), ha="center", va="center",
                  fontsize=8.5, linespacing=1.35)
    for source, target, label in ARROWS:
        if (source, target) in (("converted", "input"), ("run", "export")):
            # Back to the start of the next row: down from the source, along, down to the target.
            sx, sy = BOXES[source][0] + WIDTH / 2, BOXES[source][1]
            tx, ty = BOXES[target][0] + WIDTH / 2, BOXES[target][1] + HEIGHT
            mid = (sy + ty) / 2
            axis.plot([sx, sx, tx], [sy, mid, mid], color="#444444", linewidth=1.2)
            axis.add_patch(FancyArrowPatch((tx, mid), (tx, ty + 0.08), arrowstyle="-|>",
                                           mutation_scale=14, color="#444444", linewidth=1.2))
            axis.text((sx + tx) / 2, mid + 0.12, label, ha="center", va="bottom", fontsize=8.5,
                      style="italic")
            continue
        start, end = _anchor(source, target), _anchor(target, source)
        axis.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14,
                                       color="#444444", linewidth=1.2, shrinkA=6, shrinkB=6))
        if label:
            axis.text((start[0] + end[0]) / 2, start[1] + 0.12, label, ha="center", va="bottom",
                      fontsize=8, style="italic")
    for y, name in ((6.0, "data"), (3.2, "training"), (0.4, "serving")):
        axis.text(-0.35, y + HEIGHT / 2, name, rotation=90, ha="center", va="center",
                  fontsize=10, color="#666666")
    axis.set_xlim(-0.6, 11.9)
    axis.set_ylim(0.1, 7.5)
    axis.axis("off")
    axis.set_title("muse-tf data flow: Parquet -> TFRecord -> model -> SavedModel -> TF Serving",
                   fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Writes the diagram (default: docs/images/data_flow.png)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "docs" / "images" / "data_flow.png"))
    draw(Path(parser.parse_args(argv).output))


if __name__ == "__main__":
    main()
