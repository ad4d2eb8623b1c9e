"""Data pipelines: Taobao-MM Parquet (real or synthetic) -> vocabularies and TFRecord shards.

Commands: ``python -m pipelines.synthetic`` (planted-truth Parquet), ``python -m
pipelines.taobao_mm`` (Parquet -> converted dataset) and ``python -m pipelines.beam_convert`` (the
same on Apache Beam). See ``pipelines/README.md``.
"""

from muse_tf import keras2

keras2.select()  # before any module of this package imports TensorFlow
