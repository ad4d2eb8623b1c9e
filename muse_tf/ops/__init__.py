"""Pure TensorFlow search functions (no Keras), shared by the search layers and the input side,
which precomputes the multimodal search there."""
