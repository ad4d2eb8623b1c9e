"""Data pipelines: Taobao-MM Parquet (real or synthetic) -> vocabularies and TFRecord shards.

Commands: ``python -m pipelines.synthetic`` (planted-truth Parquet), ``python -m
pipelines.taobao_mm`` (Parquet -> converted dataset) and ``python -m pipelines.beam_convert`` (the
same on Apache Beam). See ``pipelines/README.md``.
"""

import muse_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any pipeline imports TensorFlow)
