"""The input side: the tf.data reader of converted datasets, the synthetic world and its writer, and
iterator release. It imports no Keras layer or model (setup.cfg's import-linter contract)."""
