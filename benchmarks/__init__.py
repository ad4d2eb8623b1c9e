"""Benchmarks of muse-tf: one command each, a printed table, a JSON file, the machine beside the
figures. See benchmarks/README.md."""

import muse_tf  # noqa: F401  (selects the Keras 2 API before anything here imports TensorFlow)
