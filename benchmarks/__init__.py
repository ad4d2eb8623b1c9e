"""Benchmarks of muse-tf: one command each, a printed table, a JSON file, the machine beside the
figures. See benchmarks/README.md."""

from muse_tf import keras2

keras2.select()  # before any module of this package imports TensorFlow
