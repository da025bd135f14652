"""The optimization recipe: AdamW, the per-step schedule, weight-decay exclusions, layer-wise
learning-rate decay, EMA and the loss. Backend-agnostic (Keras ops only).

* Schedule: linear warm-up from 0 to the peak lr, then cosine decay to ``min_lr``, per step
  (``keras.optimizers.schedules.CosineDecay`` with ``warmup_target``), as the official
  ``cosine_scheduler``.
* Weight decay 0.05, not applied to 1-D variables: the official rule (``len(shape) == 1``), which
  in ConvNeXt is exactly the norms' gamma/beta, every bias and the LayerScale gammas.
* Layer-wise lr decay (fine-tuning): the official ``get_num_layer_for_convnext`` groups (stem 0;
  stage 0 and 1 blocks 1, 2; stage 2 blocks three per group from 3; stage 3 and its downsampling
  the last group; head = last + 1) with scale ``decay ** (last + 1 - group)``. The official code
  hard-codes 12 groups for the 27-block stage 2; here the last group is ``3 + ceil(d2 / 3)``,
  which is 12 there and extends the same rule to every depth.
* Keras optimizers have one learning rate, so ``ConvNeXtAdamW`` multiplies it per variable
  inside ``update_step`` (the rate, not the gradient: Adam's update ignores gradient scale), and
  applies the decoupled weight decay there too, with the same scaled rate (as the official
  param groups do).
* EMA: the optimizer's own ``use_ema`` (updated every step inside the compiled train step; on
  torch as one multi-tensor lerp, ``dispatch.fused_ema_step``).
  0.9999 is the official decay for ~94k steps; shorter runs keep the same averaging horizon as
  a fraction of the run (about 11 %), so the EMA does not lag behind a small run.
"""

import math

import keras
from keras import ops

from keras_convnext import architecture, dispatch
from keras_convnext.model import stages

PAPER_LR = 4e-3
PAPER_BATCH = 4096
PAPER_EPOCHS = 300
PAPER_WARMUP_EPOCHS = 20
PAPER_EMA_DECAY = 0.9999
PAPER_STEPS = PAPER_EPOCHS * (1_281_167 // PAPER_BATCH)  # 300 epochs of ImageNet-1k at 4096


def default_lr(batch_size):
    """The paper's linear scaling rule: 4e-3 at batch 4096."""
    return PAPER_LR * batch_size / PAPER_BATCH


def default_warmup_epochs(epochs):
    """20 warm-up epochs per 300, as a fraction of the run (at most 20)."""
    return min(float(PAPER_WARMUP_EPOCHS), PAPER_WARMUP_EPOCHS * epochs / PAPER_EPOCHS)


def ema_decay_for(total_steps, decay=None):
    """``decay`` if given; else 0.9999 with its horizon (1 / (1 - decay) = 10,000 steps of
    ~94k) scaled to the same fraction of ``total_steps``."""
    if decay is not None:
        return float(decay)
    horizon = total_steps * (1.0 / (1.0 - PAPER_EMA_DECAY)) / PAPER_STEPS
    return min(PAPER_EMA_DECAY, 1.0 - 1.0 / max(horizon, 2.0))


def lr_schedule(peak_lr, min_lr, total_steps, warmup_steps):
    """Linear warm-up from 0 to ``peak_lr`` over ``warmup_steps``, then cosine to ``min_lr``."""
    total_steps = max(int(total_steps), 1)
    warmup_steps = min(int(warmup_steps), total_steps - 1)
    alpha = min(min_lr / peak_lr, 1.0) if peak_lr > 0 else 0.0
    if warmup_steps <= 0:
        return keras.optimizers.schedules.CosineDecay(peak_lr, total_steps, alpha=alpha)
    return keras.optimizers.schedules.CosineDecay(
        0.0, total_steps - warmup_steps, alpha=alpha,
        warmup_target=peak_lr, warmup_steps=warmup_steps,
    )


def no_weight_decay_variables(model):
    """Trainable variables exempt from weight decay: 1-D ones (norms, biases, LayerScale)."""
    return [v for v in model.trainable_variables if len(v.shape) <= 1]


def num_layer_groups(depths):
    """Index of the last group (stage 3): 12 for depths (3, 3, 27, 3), as officially. A
    single-stage (isotropic) model gets a group per block, as a ViT's layer decay does: the
    last is ``depth``."""
    if len(depths) == 1:
        return depths[0]
    return 3 + math.ceil(depths[2] / 3)


def layer_id(path, depths):
    """The official ``get_num_layer_for_convnext`` group of a variable, by its Keras path as
    ``keras_convnext.architecture.parse`` reads it (so the roadmap's ``stem_conv`` and
    ``stage_{i}_downsample_conv`` fall in the stem's and their stage's groups)."""
    last = num_layer_groups(depths)
    where = architecture.parse(path)
    if where is None or where.part == "head":
        return last + 1  # head_norm, predictions (and anything else outside the trunk)
    if where.part in ("preprocessing", "stem"):
        return 0
    if len(depths) == 1:  # isotropic: block j is group j + 1
        return where.block + 1
    if where.part == "downsample":
        return where.stage + 1 if where.stage in (1, 2) else last
    if where.stage in (0, 1):
        return where.stage + 1
    if where.stage == 2:
        return 3 + where.block // 3
    return last


def model_depths(model):
    """Blocks per stage of ``model``, from its stage description."""
    return tuple(stage.depth for stage in stages(model))


def layer_decay_multipliers(model, depths=None, decay=1.0):
    """``{variable path: lr multiplier}``: ``decay ** (last + 1 - group)``; {} when decay is 1.
    ``depths`` defaults to the model's own (its stage description)."""
    if decay >= 1.0:
        return {}
    depths = model_depths(model) if depths is None else depths
    top = num_layer_groups(depths) + 1
    return {v.path: decay ** (top - layer_id(v.path, depths)) for v in model.trainable_variables}


@keras.saving.register_keras_serializable(package="keras_convnext_training")
class ConvNeXtAdamW(keras.optimizers.AdamW):
    """AdamW with a learning-rate multiplier per variable (layer-wise lr decay).

    ``lr_multipliers`` maps variable paths to multipliers (absent: 1). The decoupled weight
    decay is applied in ``update_step`` with the variable's own (scaled) rate; variables given
    to ``exclude_from_weight_decay`` are not decayed. One code path for every backend and for
    tf.distribute (``update_step`` runs per replica under ``extended.update``).
    """

    def __init__(self, *args, lr_multipliers=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_multipliers = dict(lr_multipliers or {})
        self._multipliers = []

    def build(self, variables):
        super().build(variables)
        self._multipliers = [float(self.lr_multipliers.get(v.path, 1.0)) for v in variables]

    def _apply_weight_decay(self, variables):
        return  # applied per variable in update_step, with its scaled learning rate

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        """The whole update at once on a fused kernel where the backend has one
        (``dispatch.fused_adam_step``: torch), else Keras' own (``update_step`` per variable)."""
        multipliers = [self._multipliers[self._get_variable_index(v)]
                       for v in trainable_variables]
        decayed = [bool(self.weight_decay) and self._use_weight_decay(v)
                   for v in trainable_variables]
        if not dispatch.fused_adam_step(self, grads, trainable_variables, learning_rate,
                                        multipliers, decayed):
            super()._backend_update_step(grads, trainable_variables, learning_rate)

    def _update_model_variables_moving_average(self, trainable_variables):
        """The EMA update on one multi-tensor kernel where the backend has one
        (``dispatch.fused_ema_step``: torch), else Keras' own (several ops per variable)."""
        if not dispatch.fused_ema_step(self, trainable_variables):
            super()._update_model_variables_moving_average(trainable_variables)

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self._multipliers[self._get_variable_index(variable)]
        lr = ops.cast(learning_rate, variable.dtype)
        if multiplier != 1.0:
            lr = lr * multiplier
        if self.weight_decay and self._use_weight_decay(variable):
            wd = ops.cast(self.weight_decay, variable.dtype)
            self.assign_sub(variable, ops.multiply(variable, wd * lr))
        super().update_step(gradient, variable, lr)

    def get_config(self):
        return {**super().get_config(), "lr_multipliers": self.lr_multipliers}


def make_optimizer(model, config, peak_lr, total_steps, warmup_steps, ema_decay):
    """The recipe's optimizer for ``model`` (call under the distribution scope); layer-wise
    lr decay groups by the model's stage description."""
    optimizer = ConvNeXtAdamW(
        learning_rate=lr_schedule(peak_lr, config.min_lr, total_steps, warmup_steps),
        weight_decay=config.weight_decay,
        beta_1=0.9,
        beta_2=config.beta_2,
        epsilon=1e-8,
        global_clipnorm=config.clip_grad_norm,
        use_ema=config.ema,
        ema_momentum=ema_decay,
        lr_multipliers=layer_decay_multipliers(model, decay=config.layer_decay),
    )
    optimizer.exclude_from_weight_decay(var_list=no_weight_decay_variables(model))
    return optimizer


def make_loss(config):
    """Cross-entropy on one-hot (or mixed) targets with label smoothing; the model outputs
    softmax probabilities."""
    return keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)


def base_optimizer(optimizer):
    """The optimizer doing the updates (unwraps the fp16 LossScaleOptimizer)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def ema_variables(optimizer):
    """``{variable path: its EMA copy}`` kept by the optimizer; {} without EMA (or unbuilt)."""
    optimizer = base_optimizer(optimizer)
    if optimizer is None or not getattr(optimizer, "use_ema", False):
        return {}
    averages = getattr(optimizer, "_model_variables_moving_average", None) or []
    return {v.path: a for v, a in zip(optimizer._trainable_variables, averages) if a is not None}
