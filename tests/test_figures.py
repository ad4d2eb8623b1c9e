"""The picture generators run on tiny inputs and write PNGs (no pixel assertions): the data-flow
diagram with the TF Serving versions of serving/docker-compose.yml, and the serving-latency plot
redrawn from a saved results file."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def load_figures():
    spec = importlib.util.spec_from_file_location("docs_figures", ROOT / "docs" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serving_versions_come_from_the_compose_file():
    figures = load_figures()
    compose = (ROOT / "serving" / "docker-compose.yml").read_text()
    default = re.search(r"TF_SERVING_VERSION:-([\w.]+)\}", compose).group(1)
    images = figures.serving_images()
    assert images[0][1] == default  # the image docker compose pulls unless told otherwise
    assert {tf for tf, _ in images} >= {"2.16", "2.21"}  # one image per lock set's TensorFlow
    for tf, image in images:
        assert image.startswith(tf + "."), (tf, image)


def test_serving_versions_missing_is_a_clear_error(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  muse-serving:\n    image: tensorflow/serving:latest\n")
    with pytest.raises(ValueError, match="docker-compose.yml: expected the image"):
        load_figures().serving_images(broken)


def test_data_flow_diagram_is_written(tmp_path):
    path = tmp_path / "flow.png"
    load_figures().main(["--output", str(path)])
    assert path.read_bytes()[:8] == PNG


def test_serving_latency_replot_from_json_measures_nothing(tmp_path):
    from benchmarks import serving_latency

    rows = []
    for length in (1_000, 3_000, 10_000):
        for count in (1, 100):
            rank = {"table": "latency", "L": length, "C": count, "p50_ms": 1.0 + length / 1e3 * count}
            rows += [{**rank, "path": "in-process", "floor_p50_ms": rank["p50_ms"] / 2},
                     {**rank, "path": "server grpc", "p50_ms": rank["p50_ms"] + 1.0}]
    results = tmp_path / "latency.json"
    results.write_text(json.dumps({"started": "2026-01-01T00:00:00+00:00", "results": rows,
                                   "machine": {"nproc": 2, "tensorflow": "2.x", "python": "3.x"}}))
    assert serving_latency.main(["--replot", str(results)]) == {}
    assert (tmp_path / "latency.png").read_bytes()[:8] == PNG


def test_readme_diagram_names_the_same_serving_images():
    mermaid = next(line for line in (ROOT / "README.md").read_text().splitlines() if 'S["TF Serving' in line)
    for tf, image in load_figures().serving_images():
        assert f"{image} (TF {tf} exports)" in mermaid, (tf, image, mermaid)
