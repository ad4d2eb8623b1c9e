"""The training's optimizers, cut to what a step needs.

tf-keras Adam decays the moments of *every* row of a table at every step, even when the gradient is
an ``IndexedSlices`` naming a few hundred rows: at Taobao-MM's 35.4M item rows that is seconds per
step. ``SparseAdam`` touches only the rows in the gradient, as ``torch.optim.SparseAdam`` (which the
official MUSE code uses for its embeddings) does. The dense weights' Adam and AdamW are tf-keras's
with each weight's update one fused kernel (``FusedAdam``, ``FusedAdamW``).
"""

from __future__ import annotations

import types
from collections.abc import Iterable

import tensorflow as tf
import tf_keras

from muse_tf.config import DENSE_OPTIMIZERS, EMBEDDING_OPTIMIZERS, LEARNING_RATE_SCHEDULES

# torch.optim defaults, which the official code keeps.
TORCH_EPSILON = 1e-8
TORCH_ADAMW_WEIGHT_DECAY = 0.01
PAPER_EMBEDDING_LEARNING_RATE = 2e-3


class _SharedStepScalars:
    """Adam's scalars of a step (learning rate, betas, their powers at the step, epsilon) made once
    per ``apply_gradients`` and shared by every weight's update. tf-keras makes them per weight:
    ~10 ops each, ~350 of a MUSE train step's 3,500, all traced and optimised before the first
    step runs. Kept per graph: on a GPU tf-keras compiles each weight's update as its own function.
    """

    def apply_gradients(
        self, grads_and_vars: Iterable[tuple[tf.Tensor | tf.IndexedSlices, tf.Variable]], *args, **kwargs
    ) -> tf.Variable:
        # In a SimpleNamespace: a dict attribute would become part of the optimizer's checkpoint.
        self._step_scalars = types.SimpleNamespace(by_key={})
        try:
            return super().apply_gradients(grads_and_vars, *args, **kwargs)
        finally:
            self._step_scalars = None

    def adam_scalars(self, dtype: tf.dtypes.DType) -> dict[str, tf.Tensor]:
        """``lr``, ``beta_1``, ``beta_2``, ``beta_1_power`` and ``beta_2_power`` (at this step,
        ``iterations + 1``) and ``epsilon``, as ``dtype``."""
        step_scalars = getattr(self, "_step_scalars", None)
        cache = step_scalars.by_key if step_scalars is not None else None
        key = (dtype, tf.compat.v1.get_default_graph())
        if cache and key in cache:
            return cache[key]
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        scalars = {
            "lr": tf.cast(self.learning_rate, dtype), "beta_1": beta_1, "beta_2": beta_2,
            "beta_1_power": tf.pow(beta_1, step), "beta_2_power": tf.pow(beta_2, step),
            "epsilon": tf.cast(self.epsilon, dtype),
        }
        if cache is not None:
            cache[key] = scalars
        return scalars


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class SparseAdam(_SharedStepScalars, tf_keras.optimizers.Optimizer):
    """Lazy Adam: only the rows present in a sparse gradient have their moments and values updated.

    For a gradient ``IndexedSlices(values, indices)`` at step t (this optimizer's t-th update):
    repeated indices are summed into one row gradient g, then for those rows only

        m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2,
        w <- w - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps),

    and every other row (value and moments) is left as it was, which is ``torch.optim.SparseAdam``.
    A row's moments therefore do not decay over the steps it is absent from the batch.

    Dense gradients are refused (as torch does): a dense gradient of an embedding table means some
    op densified it, and the step would then cost the whole table.

    Args:
        learning_rate: float or schedule.
        beta_1, beta_2: moment decay rates.
        epsilon: added to sqrt(v) (torch's default, 1e-8).
    """

    def __init__(
        self,
        learning_rate: float = 1e-3,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = TORCH_EPSILON,
        name: str = "SparseAdam",
        **kwargs,
    ):
        # The number of rows a gradient holds changes every step: XLA would compile each anew.
        kwargs["jit_compile"] = False
        # tf-keras's default, 0, is not None: every step would multiply every row of every table
        # by zero and write it back (a pass over the whole table, 0.3 s at 10M rows).
        kwargs["weight_decay"] = None
        super().__init__(name=name, **kwargs)
        self._learning_rate = self._build_learning_rate(learning_rate)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon

    def build(self, var_list: list[tf.Variable]) -> None:
        """Creates the first and second moment of every table (zeros, the tables' shapes)."""
        super().build(var_list)
        if getattr(self, "_built", False):
            return
        self._built = True
        self._momentums = [self.add_variable_from_reference(v, "m") for v in var_list]
        self._velocities = [self.add_variable_from_reference(v, "v") for v in var_list]

    def update_step(self, gradient: tf.IndexedSlices, variable: tf.Variable) -> None:
        if not isinstance(gradient, tf.IndexedSlices):
            raise TypeError(
                f"SparseAdam got a dense gradient for {variable.name}: it updates embedding tables "
                "from sparse (IndexedSlices) gradients only. Look the table up with "
                "tf.nn.embedding_lookup (or an Embedding layer) on the variable itself."
            )
        # tf-keras's apply_gradients has summed repeated indices already (one row each).
        rows, grad = gradient.indices, gradient.values
        s = self.adam_scalars(variable.dtype)
        index = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[index], self._velocities[index]
        m_rows = tf.gather(m, rows) * s["beta_1"] + grad * (1 - s["beta_1"])
        v_rows = tf.gather(v, rows) * s["beta_2"] + tf.square(grad) * (1 - s["beta_2"])
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        if "step_size" not in s:  # shared by the tables, as the scalars it is made of
            s["step_size"] = s["lr"] * tf.sqrt(1 - s["beta_2_power"]) / (1 - s["beta_1_power"])
        variable.scatter_sub(
            tf.IndexedSlices(s["step_size"] * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows)
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            learning_rate=self._serialize_hyperparameter(self._learning_rate),
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            epsilon=self.epsilon,
        )
        config.pop("jit_compile", None)
        return config


class _FusedAdamUpdate(_SharedStepScalars):
    """tf-keras Adam's dense update as one ``ResourceApplyAdam`` kernel per weight.

    The formula is tf-keras's (Kingma & Ba's, epsilon added to sqrt(v)): m <- m + (g - m)(1 - b1),
    v <- v + (g^2 - v)(1 - b2), w <- w - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps). tf-keras
    builds it from ~10 element-wise ops per weight: a step's graph then has hundreds more ops to
    trace, optimise and run, each a pass over the weight. Sparse gradients and options the kernel
    lacks (amsgrad, adaptive epsilon) keep tf-keras's update.
    """

    def update_step(self, gradient: tf.Tensor | tf.IndexedSlices, variable: tf.Variable) -> None:
        if isinstance(gradient, tf.IndexedSlices) or self.amsgrad or getattr(self, "adaptive_epsilon", False):
            super().update_step(gradient, variable)
            return
        index = self._index_dict[self._var_key(variable)]
        s = self.adam_scalars(variable.dtype)
        # `handle`: the weight's own copy on this device under tf.distribute (an update context).
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
            beta1_power=s["beta_1_power"], beta2_power=s["beta_2_power"], lr=s["lr"],
            beta1=s["beta_1"], beta2=s["beta_2"], epsilon=s["epsilon"], grad=gradient,
        )


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class FusedAdam(_FusedAdamUpdate, tf_keras.optimizers.Adam):
    """tf-keras Adam, its dense update fused (``_FusedAdamUpdate``); same arguments and slots."""


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class FusedAdamW(_FusedAdamUpdate, tf_keras.optimizers.AdamW):
    """tf-keras AdamW (decoupled weight decay, w <- w - lr wd w before the update), its dense
    update fused (``_FusedAdamUpdate``); same arguments and slots."""


LearningRate = float | tf_keras.optimizers.schedules.LearningRateSchedule


def learning_rate(peak: float, schedule: str, total_steps: int, warmup_fraction: float) -> LearningRate:
    """``peak`` at every step (``constant``), or ``warmup_cosine``: linear from 0 to ``peak`` over
    the first ``warmup_fraction`` of ``total_steps``, then a cosine decay to 0 at the last step.
    Both follow the optimizer's own step counter, so a resumed run continues the schedule."""
    if schedule == "constant":
        return peak
    if schedule == "warmup_cosine":
        warmup = int(warmup_fraction * total_steps)
        return tf_keras.optimizers.schedules.CosineDecay(
            0.0, max(1, total_steps - warmup), warmup_target=peak, warmup_steps=warmup
        )
    raise ValueError(f"Unknown learning rate schedule {schedule!r}; choose one of {LEARNING_RATE_SCHEDULES}.")


def dense_optimizer(name: str, learning_rate: LearningRate) -> tf_keras.optimizers.Optimizer:
    """The optimizer of every weight but the embedding tables, by name.

    ``adamw`` is the official code's: torch's AdamW defaults (decoupled weight decay 0.01,
    epsilon 1e-8). ``adam`` is tf-keras Adam with its own defaults. Both are tf-keras's, with the
    update fused (``FusedAdam``, ``FusedAdamW``).
    """
    if name == "adam":
        return FusedAdam(learning_rate)
    if name == "adamw":
        return FusedAdamW(
            learning_rate, weight_decay=TORCH_ADAMW_WEIGHT_DECAY, epsilon=TORCH_EPSILON
        )
    raise ValueError(f"Unknown dense optimizer {name!r}; choose one of {DENSE_OPTIMIZERS}.")


def embedding_optimizer(name: str, learning_rate: LearningRate) -> tf_keras.optimizers.Optimizer:
    """The optimizer of the embedding tables, by name: ``sparse_adam`` (``SparseAdam``) or
    ``adam`` (tf-keras Adam, which updates every row of a table at every step)."""
    if name == "sparse_adam":
        return SparseAdam(learning_rate)
    if name == "adam":
        return tf_keras.optimizers.Adam(learning_rate)
    raise ValueError(f"Unknown embedding optimizer {name!r}; choose one of {EMBEDDING_OPTIMIZERS}.")
