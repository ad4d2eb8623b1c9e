"""Data pipelines: Taobao-MM Parquet (real or synthetic) -> vocabularies and TFRecord shards.

Commands: ``python -m pipelines.synthetic`` (planted-truth Parquet) and ``python -m
pipelines.taobao_mm`` (Parquet -> converted dataset). See ``pipelines/README.md``.
"""

from muse_tf import keras2

keras2.select()  # before any module of this package imports TensorFlow
