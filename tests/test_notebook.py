"""The Colab quickstart runs headless (nbclient) on its tiny configuration, and what it reports is
right: AUC/GAUC against a brute-force pairwise reference, the layer shapes, the history-length
buckets, and the served scores against the SavedModel itself and the Keras model."""

import json
import math
import os
import re
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from muse_tf import cli
from muse_tf.contract import signatures

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "muse_quickstart.ipynb"
KERNEL = "muse-tf-quickstart-test"

# Appended to the notebook for the test only: dumps what the notebook computed.
PROBE = """
import json as _json
_json.dump({
    "labels": scored["labels"].tolist(), "logits": scored["logits"].tolist(),
    "groups": [str(g) for g in scored["groups"]], "history_length": scored["history_length"].tolist(),
    "overall": overall, "by_length": by_length, "edges": list(edges),
    "din_logits": din_scored["logits"].tolist(), "din_overall": din_overall,
    "din_labels": din_scored["labels"].tolist(), "din_groups": [str(g) for g in din_scored["groups"]],
    "din_by_length": din_by_length, "din_curve_points": len(din_curve),
    "shapes": {"tiers": list(tiers.shape), "interest": list(interest.shape), "kept": list(kept.shape),
               "similarity": list(similarity.shape)},
    "batch_size": int(batch[features.ITEM_ID].shape[0]), "D": D, "K": K, "gsu_error": gsu_error,
    "curve_points": len(curve), "evals": TRAIN.epochs * EVALS_PER_EPOCH,
    "export_dir": export_dir, "server_returncode": server.process.returncode,
    "rank_request": {k: np.asarray(v).tolist() for k, v in rank_request.items()},
    "offline_logits": offline_logits.tolist(), "grpc_logits": ranked[signatures.LOGIT].tolist(),
    "grpc_probabilities": ranked[signatures.PROBABILITY].tolist(),
    "rest_logits": rows[signatures.LOGIT].tolist(),
    "figures": FIGURES_DIR, "executable": sys.executable,
}, open("results.json", "w"))
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Executes the notebook in a kernel running this interpreter; returns the probe's dump."""
    root = tmp_path_factory.mktemp("quickstart")
    spec_dir = root / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "muse-tf (test)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(PROBE))
    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "MUSE_QUICKSTART_TINY": "1",
            "MUSE_QUICKSTART_DIR": str(root / "work"),
            "MUSE_QUICKSTART_FIGURES": str(root / "figures"),
            "JUPYTER_PATH": str(root / "jupyter"),  # searched first: our kernelspec wins
            "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
            "IPYTHONDIR": str(root / "ipython"),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }.items():
            env.setenv(name, value)
        # ipykernel forwards what its process and children write to file descriptors 1 and 2
        # (native logs) into the outputs, as for a user, unless it runs under pytest.
        env.delenv("PYTEST_CURRENT_TEST", raising=False)
        client = NotebookClient(
            notebook, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": str(root)}}
        )
        client.execute()
    nbformat.write(notebook, root / "executed.ipynb")  # as `jupyter execute --output` saves it
    return {**json.loads((root / "results.json").read_text()), "saved": str(root / "executed.ipynb")}


def pairwise_auc(labels, scores):
    """P(score of a positive > score of a negative), ties one half, over all pairs."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return math.nan
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.parametrize("model", ["", "din_"])
def test_auc_and_gauc_match_a_pairwise_reference(results, model):
    # Each scoring pass may order the rows differently (the test input is not deterministic).
    labels, groups = results[f"{model}labels"], results[f"{model}groups"]
    logits = np.array(results[f"{model}logits"])
    overall = results[f"{model}overall"]
    assert overall["examples"] == len(labels) == len(logits) > 0
    assert 0.0 <= overall["auc"] <= 1.0
    assert overall["auc"] == pytest.approx(pairwise_auc(labels, logits), abs=1e-9)
    weighted, weights = 0.0, 0
    for user in set(groups):
        rows = [i for i, g in enumerate(groups) if g == user]
        user_auc = pairwise_auc([labels[i] for i in rows], logits[rows])
        if not math.isnan(user_auc):
            weighted += user_auc * len(rows)
            weights += len(rows)
    assert weights > 0
    assert overall["gauc"] == pytest.approx(weighted / weights, abs=1e-9)


def test_history_length_buckets_cover_every_test_sample(results):
    lengths = np.array(results["history_length"])
    edges = results["edges"] + [math.inf]
    expected = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        expected_count = int(np.sum((lengths >= lo) & (lengths < hi)))
        if expected_count:
            expected[lo] = expected_count
    for rows in (results["by_length"], results["din_by_length"]):
        assert [row["examples"] for row in rows] == list(expected.values())
    assert sum(expected.values()) == len(lengths)


def test_layer_shapes_and_search_are_as_documented(results):
    b, d, k = results["batch_size"], results["D"], results["K"]
    assert results["shapes"] == {
        "tiers": [b, 22], "interest": [b, 2 * d], "kept": [b, k, 2 * d], "similarity": [b, k],
    }
    assert results["gsu_error"] < 1e-5


def test_learning_curve_and_figures(results):
    assert results["curve_points"] == results["din_curve_points"] == results["evals"] >= 2
    for name in ("learning_curve.png", "gauc_by_history_length.png"):
        data = (Path(results["figures"]) / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_served_scores_equal_the_saved_model_and_keras(results):
    import tensorflow as tf

    assert results["server_returncode"] is not None  # the notebook shut its server down
    request = results["rank_request"]
    loaded = tf.saved_model.load(results["export_dir"])
    rank = loaded.signatures[signatures.RANK]
    direct = rank(**{k: tf.constant(v, tf.int64) for k, v in request.items()})
    grpc_logits = np.array(results["grpc_logits"])
    assert len(grpc_logits) == len(request["item_id"]) > 0
    np.testing.assert_allclose(grpc_logits, direct[signatures.LOGIT].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(results["offline_logits"], grpc_logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(results["rest_logits"], grpc_logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        results["grpc_probabilities"], 1 / (1 + np.exp(-grpc_logits)), rtol=0, atol=1e-6
    )


def test_the_kernel_ran_this_interpreter(results):
    assert os.path.realpath(results["executable"]) == os.path.realpath(sys.executable)


# TensorFlow's native log lines: absl's (``I0000 00:00:1796... 4947 port.cc:153] ...``), the older
# ``2026-01-01 00:00:00.000000: I tensorflow/...cc:113] ...`` and those the command lines drop.
NATIVE_LOG = re.compile(
    r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w/.]+:\d+\]"
    r"|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] [\w/.]+:\d+\]"
    r"|" + cli.HARMLESS_NATIVE_LOGS.pattern,
    re.MULTILINE,
)


def test_the_saved_outputs_hold_no_native_log_line(results):
    """What a run of the notebook saves (README's headless command) carries none of TensorFlow's
    native start-up lines, on either TensorFlow."""
    notebook = nbformat.read(results["saved"], as_version=4)
    texts = [output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
             for output in cell.outputs]
    assert any("TensorFlow 2." in text for text in texts)  # the outputs are read
    found = [match.group(0) for text in texts for match in NATIVE_LOG.finditer(text)]
    assert not found, found
