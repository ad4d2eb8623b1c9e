"""AutoGraph leaves tf-keras and the model's own code unconverted: tracing a train step then only
runs Python, it does not rewrite it first.

TensorFlow's AutoGraph never converts modules named ``keras`` (one of its built-in rules); Keras 2
moved to the ``tf_keras`` package, which that rule no longer matches, so tracing a train step
rewrote tf-keras's ``Layer.__call__``, ``Model.train_step``, metrics and losses source to source
(some 2,500 conversions) before building the graph. Profiled (``py-spy``) on the default MUSE at
batch 1,000, L = 1,000, that conversion was 47 of the first step's 79 s. The code is the same code
Keras 2 ran unconverted, so the ``keras`` rule is extended to it.

The model's own packages (``MODEL_PACKAGES``) branch only on Python values (config flags, static
shapes) and write tensor control flow as ops (``tf.cond``, ``tf.where``), so converting them
changes nothing but the time: about half of the remaining tracing (the benchmark's MUSE at batch
1,000: 4.0 -> 2.0-2.4 s). A function ``tf.function`` is given directly (Keras's ``train_function``)
is still converted.
"""

from __future__ import annotations

KERAS_PACKAGE = "tf_keras"
MODEL_PACKAGES = ("muse_tf.models", "muse_tf.layers", "muse_tf.ops")


def keep_keras_unconverted() -> bool:
    """Adds a do-not-convert rule for ``tf_keras`` and each of ``MODEL_PACKAGES`` to AutoGraph's
    rules (idempotent).

    Returns:
        Whether the rules are in effect: False when this TensorFlow has no such rules table
        (tracing then converts them as before: slower, never different).
    """
    try:
        from tensorflow.python.autograph.core import config, config_lib
    except ImportError:  # a TensorFlow that moved its private AutoGraph configuration
        return False
    rules = getattr(config, "CONVERSION_RULES", None)
    if not isinstance(rules, tuple):
        return False
    for package in (KERAS_PACKAGE, *MODEL_PACKAGES):
        if not any(isinstance(r, config_lib.DoNotConvert) and r.matches(package) for r in rules):
            rules = (*rules, config_lib.DoNotConvert(package))
    config.CONVERSION_RULES = rules
    return True
