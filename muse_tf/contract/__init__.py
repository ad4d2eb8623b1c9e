"""What crosses package lines: the feature names, the TFRecord schema, the vocabulary index rule, the
serving signatures and limits, the converted dataset directory, and the file lock.

Pipelines and serving import the library through here (plus ``muse_tf.cli``, ``muse_tf.keras2`` and
``muse_tf.config``); setup.cfg's import-linter contracts keep it so.
"""
