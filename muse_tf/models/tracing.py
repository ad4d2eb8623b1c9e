"""AutoGraph leaves tf-keras's own code unconverted, as TensorFlow's rules already do for ``keras``.

TensorFlow's AutoGraph never converts modules named ``keras`` (one of its built-in rules); Keras 2
moved to the ``tf_keras`` package, which that rule no longer matches, so tracing a train step
rewrote tf-keras's ``Layer.__call__``, ``Model.train_step``, metrics and losses source to source
(some 2,500 conversions) before building the graph. Profiled (``py-spy``) on the default MUSE at
batch 1,000, L = 1,000, that conversion was 47 of the first step's 79 s. The code is the same code
Keras 2 ran unconverted, so the ``keras`` rule is extended to it; muse-tf's own layers are still
converted, and a function ``tf.function`` is given directly (Keras's ``train_function``) still is.
"""

from __future__ import annotations

KERAS_PACKAGE = "tf_keras"


def keep_keras_unconverted() -> bool:
    """Adds a do-not-convert rule for ``tf_keras`` to AutoGraph's rules (idempotent).

    Returns:
        Whether the rule is in effect: False when this TensorFlow has no such rules table (tracing
        then converts tf-keras as before: slower, never different).
    """
    try:
        from tensorflow.python.autograph.core import config, config_lib
    except ImportError:  # a TensorFlow that moved its private AutoGraph configuration
        return False
    rules = getattr(config, "CONVERSION_RULES", None)
    if not isinstance(rules, tuple):
        return False
    rule = config_lib.DoNotConvert(KERAS_PACKAGE)
    if not any(isinstance(r, config_lib.DoNotConvert) and r.matches(KERAS_PACKAGE) for r in rules):
        config.CONVERSION_RULES = (*rules, rule)
    return True
