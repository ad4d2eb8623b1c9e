"""The official MUSE code's training step (alimama-tech/MUSE, PyTorch), timed on this CPU: the
other side of ``benchmarks.versus_official``.

    PYTHONPATH=. TORCH_PYTHON -m benchmarks.official_driver --official-dir DIR --inputs NPZ \\
        [--steps 60] [--warmup 2] [--output JSON] [--ddp]

Runs under a Python with torch (not TensorFlow) and imports the official code from
``--official-dir`` (a checkout; nothing of it is copied here). Builds the model and optimizers as
its ``main.py`` does for ``config/muse.json`` (its ``create_model``, ``FeatureEmbeddingDict``,
AdamW(fused) on the dense weights, SparseAdam on the embedding tables, its ``Trainer``) on one CPU
process, and times each call of ``Trainer.forward_step(batch, mode="train")``: the official step as
its training loop runs it (search, embeddings, forward, loss, backward, both optimizer steps and the
per-batch AUC / GAUC / confusion-matrix metrics, which are timed apart as ``metrics_p50_ms``).

``--inputs`` is written by ``benchmarks.versus_official`` from ``benchmarks.fixtures``: the very
batch muse-tf trains on, in the official batch format (raw-ID columns ``129_1``, ``205``, ...,
``150_2_180``, ``label`` as (B, 2)), every vocabulary's row count and the int8 multimodal table
(items with a vector only, as the official keys/values files). A vocabulary's raw IDs are its row
indices 1..rows-1, so both sides look up the same rows. ``--ddp`` wraps both modules in
DistributedDataParallel (gloo, one process, ``find_unused_parameters=True``) as the official
launch script does on GPUs; by default they are not wrapped, as muse-tf's step runs without a
distribution strategy here. torch's default thread count is kept and recorded.

The last stdout line is the result as JSON (``--output`` also writes it to a file).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time

from benchmarks import common  # stdlib and NumPy only: no TensorFlow in this process

PROG = "python -m benchmarks.official_driver"
CONFIG = os.path.join("config", "muse.json")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-dir", help="checkout of the official MUSE code")
    parser.add_argument("--inputs", help=".npz written by benchmarks.versus_official")
    parser.add_argument("--steps", type=int, default=60, help="timed steps after the warm-up")
    parser.add_argument("--warmup", type=int, default=2,
                        help="steps after the first one, not timed into the steady state")
    parser.add_argument("--output", help="also write the JSON result here")
    parser.add_argument("--ddp", action="store_true",
                        help="wrap the modules in DistributedDataParallel as the official launch")
    args = parser.parse_args(argv)
    for flag, path in (("--official-dir", args.official_dir), ("--inputs", args.inputs)):
        if not path:
            parser.exit(2, f"{PROG}: error: {flag} is required\n")
    if not os.path.isfile(os.path.join(args.official_dir, "model", "muse.py")):
        parser.exit(2, f"{PROG}: error: --official-dir {args.official_dir} holds no model/muse.py: "
                       "not a checkout of the official MUSE code (alimama-tech/MUSE)\n")
    if not os.path.isfile(args.inputs):
        parser.exit(2, f"{PROG}: error: --inputs {args.inputs} does not exist\n")
    return args


def load_inputs(path: str):
    """The official batch (torch tensors), each vocabulary's rows, the multimodal keys/values."""
    import numpy as np
    import torch

    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    batch = {name.split("/", 1)[1]: torch.from_numpy(value) for name, value in arrays.items()
             if name.startswith("batch/")}
    rows = {name.split("/", 1)[1]: int(value) for name, value in arrays.items()
            if name.startswith("rows/")}
    return batch, rows, {"keys": arrays["scl_keys"], "values": arrays["scl_values"]}


def build(official_dir: str, rows: dict[str, int], scl: dict, ddp: bool):
    """The official model, optimizers and trainer for config/muse.json, on the CPU."""
    import numpy as np
    import torch
    import torch.distributed as dist

    sys.path.insert(0, os.path.abspath(official_dir))
    import main as official_main
    from model.base_model.feature_embedding import FEAT_NAME_WITH_UNIQUE_EMB, FeatureEmbeddingDict
    from trainer import Trainer

    args = official_main.load_config(os.path.join(official_dir, CONFIG))
    # The embedding module asks the process group for its rank unless it runs on CUDA device 0.
    store = tempfile.NamedTemporaryFile(prefix="official_driver_pg_", delete=False).name
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    official_main.setup_seed(args["seed"])
    device = torch.device("cpu")
    embedding_layer = FeatureEmbeddingDict(
        dim=args["embedding_dim"],
        device=device,
        world_size=1,
        loaded_feature_map={c: np.arange(1, rows[c], dtype=np.int64) for c in FEAT_NAME_WITH_UNIQUE_EMB},
        loaded_scl_emb=scl,
        item_id_p90=args["item_id_p90"],
        scl_emb_p90=args["scl_emb_p90"],
        feature_map_on_cuda=args["feature_map_on_cuda"],
        scl_emb_on_cuda=args["scl_emb_on_cuda"],
    )
    model = official_main.create_model(args)
    # main.py's optimizers: every embedding table is sparse (SparseAdam), the rest AdamW.
    dense_params = ([p for p in embedding_layer.get_dense_parameters() if p.requires_grad]
                    + [p for p in model.parameters() if p.requires_grad])
    dense_opt = torch.optim.AdamW(dense_params, lr=args["dense_lr"], fused=True)
    sparse_opt = torch.optim.SparseAdam(embedding_layer.get_sparse_parameters(), lr=args["sparse_lr"])
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        embedding_layer = DDP(embedding_layer, find_unused_parameters=True)
        model = DDP(model, find_unused_parameters=True)
    trainer = Trainer(dense_model=model, sparse_model=embedding_layer, dense_opt=dense_opt,
                      sparse_opt=sparse_opt, train_dataloader=None, test_dataloader=None, args=args,
                      device=device, rank=0, world_size=1, keep_top=args["keep_top"])
    return trainer, args, store


def time_metrics(trainer_module) -> list[float]:
    """Wraps the trainer's per-batch metric functions; returns the list their seconds go to."""
    spent: list[float] = []
    for name in ("calc_auc_gpu", "calc_gauc_gpu", "_confusion_matrix_at_thresholds"):
        function = getattr(trainer_module, name)

        def timed(*args, function=function):
            started = time.perf_counter()
            try:
                return function(*args)
            finally:
                spent.append(time.perf_counter() - started)

        setattr(trainer_module, name, timed)
    return spent


def optimizers(trainer) -> dict[str, str]:
    """The two optimizers with their settings, as the trainer holds them."""
    def describe(optimizer) -> str:
        keys = ("lr", "betas", "eps", "weight_decay", "fused")
        return type(optimizer).__name__ + str({k: optimizer.defaults[k] for k in keys
                                               if k in optimizer.defaults})

    return {"dense": describe(trainer.dense_opt), "embeddings": describe(trainer.sparse_opt)}


def run(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    started = time.perf_counter()
    batch, rows, scl = load_inputs(args.inputs)
    trainer, config, store = build(args.official_dir, rows, scl, args.ddp)
    import trainer as trainer_module

    metric_seconds = time_metrics(trainer_module)
    setup_s = time.perf_counter() - started
    step_s, metrics_s, losses = [], [], []
    for _ in range(1 + args.warmup + args.steps):
        step_batch = copy.copy(batch)  # forward_step adds and drops keys, never changes a tensor
        del metric_seconds[:]
        begin = time.perf_counter()
        loss, _ = trainer.forward_step(step_batch, mode="train")
        step_s.append(time.perf_counter() - begin)
        metrics_s.append(sum(metric_seconds))
        losses.append(float(loss.detach()))
    torch.distributed.destroy_process_group()
    os.unlink(store)
    steady = step_s[1 + args.warmup:]
    steady_metrics = metrics_s[1 + args.warmup:]
    size = len(batch["label"])
    p50 = statistics.median(steady)
    return {
        "side": "official",
        "batch": size,
        "history": int(batch["150_2_180"].shape[1]),
        "top_k": config["keep_top"],
        "first_step_s": round(step_s[0], 3),
        "step_p50_ms": round(1e3 * p50, 3),
        "step_p90_ms": round(1e3 * float(np.percentile(steady, 90)), 3),
        "examples_per_s": round(size / p50, 1),
        "steps": len(steady),
        "metrics_p50_ms": round(1e3 * statistics.median(steady_metrics), 3),
        "step_without_metrics_p50_ms": round(
            1e3 * statistics.median(s - m for s, m in zip(steady, steady_metrics)), 3),
        "setup_s": round(setup_s, 2),
        "loss_first_last": [round(losses[0], 5), round(losses[-1], 5)],
        "ddp": args.ddp,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "optimizers": optimizers(trainer),
        "config": CONFIG,
        **common.cpu_times(),
        "malloc": os.environ.get("LD_PRELOAD") or common.SYSTEM_MALLOC,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run(args)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
