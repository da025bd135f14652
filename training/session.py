"""One training session: config -> schedule -> optimizer -> compile -> callbacks -> fit.

Every program that trains a model with the recipe goes through ``TrainingSession``:
``training.train`` (a resumable run), ``training.roadmap_experiment`` (one session per step) and
``benchmarks/compare.py`` (ConvNeXt, Swin and ResNet on one recipe). The session owns the
choices they must agree on: steps per epoch from the global batch, the peak learning rate
(linear scaling with replicas), warm-up, the EMA decay for the run's length, what
``drop_path=None`` means, and how a failing input pipeline is reported.
"""

import dataclasses
import sys

import keras
import tensorflow as tf

from training import augment, data, recipe, strategy
from training.callbacks import EmaEvaluation, NanGuard
from training.data import DataError


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss); the message is one line."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The run's step counts and rates, derived once from the config and the data."""

    global_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    ema_decay: float

    @classmethod
    def plan(cls, config, num_train, num_replicas=1):
        global_batch = config.batch_size * num_replicas
        if config.steps_per_epoch is not None:
            steps_per_epoch = config.steps_per_epoch
        elif num_train is None:
            raise DataError("the training set size is unknown: set steps_per_epoch")
        else:
            steps_per_epoch = max(1, num_train // global_batch)
        peak_lr = config.lr if config.lr is not None else recipe.default_lr(config.batch_size)
        peak_lr *= num_replicas  # linear scaling with the global batch
        warmup_epochs = min(
            config.epochs,
            config.warmup_epochs if config.warmup_epochs is not None
            else recipe.default_warmup_epochs(config.epochs),
        )
        total_steps = config.epochs * steps_per_epoch
        return cls(
            global_batch=global_batch,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            warmup_steps=int(round(warmup_epochs * steps_per_epoch)),
            peak_lr=peak_lr,
            ema_decay=recipe.ema_decay_for(total_steps, config.ema_decay),
        )


def drop_path_rate(config, default):
    """Stochastic depth of the run: ``config.drop_path``, or the architecture's paper value
    (``default``) when it is None."""
    return default if config.drop_path is None else config.drop_path


class TrainingSession:
    """The recipe applied to one model on one data source under one distribution runtime."""

    def __init__(self, config, runtime, source):
        self.config = config
        self.runtime = runtime
        self.source = source
        self.schedule = Schedule.plan(config, source.num_train, runtime.num_replicas)
        self.nan_guard = NanGuard()

    def datasets(self, start_epoch=0):
        """(training, validation) ``tf.data`` pipelines at the global batch; the training one
        starts where ``start_epoch`` epochs left it (the same batches as an unbroken run)."""
        config, batch = self.config, self.schedule.global_batch
        train = data.train_pipeline(self.source, config, batch, augment.image_augment(config),
                                    augment.batch_augment(config),
                                    start_step=start_epoch * self.schedule.steps_per_epoch)
        return train, data.eval_pipeline(self.source, config, batch)

    def compile(self, build, prepare=None, metrics=("accuracy",), loss=recipe.make_loss):
        """Builds ``build()`` under the runtime's scope, calls ``prepare(model)`` (e.g. to load
        pretrained weights), compiles it with the recipe's optimizer and ``loss(config)`` (the
        recipe's cross-entropy; None for a model with its own ``compute_loss``, as FCMAE), and
        adapts it to the runtime. Returns the model."""
        s = self.schedule
        # layers take the global policy when they are made; a run's config decides it
        keras.config.set_dtype_policy(strategy.dtype_policy(self.config.mixed_precision))
        with self.runtime.scope():
            model = build()
            if prepare is not None:
                prepare(model)
            optimizer = recipe.make_optimizer(
                model, self.config, s.peak_lr, s.total_steps, s.warmup_steps, s.ema_decay)
            jit = "auto" if self.config.jit_compile is None else self.config.jit_compile
            model.compile(optimizer=optimizer, loss=None if loss is None else loss(self.config),
                          metrics=list(metrics), jit_compile=jit)
            model.optimizer.build(model.trainable_variables)
        strategy.adapt_model(self.runtime, model)
        return model

    def callbacks(self, *extra):
        """The NaN guard, EMA validation (with EMA on), then ``extra``."""
        return [self.nan_guard] + ([EmaEvaluation()] if self.config.ema else []) + list(extra)

    def verbosity(self):
        if self.config.verbose is not None:
            return self.config.verbose
        return 1 if sys.stdout.isatty() else 2

    def fit(self, model, train_ds, val_ds, callbacks, initial_epoch=0):
        """``model.fit`` over the run's epochs; an input failure becomes one ``DataError``."""
        try:
            return model.fit(
                train_ds, epochs=self.config.epochs, initial_epoch=initial_epoch,
                steps_per_epoch=self.schedule.steps_per_epoch, validation_data=val_ds,
                validation_steps=self.config.validation_steps, callbacks=callbacks,
                verbose=self.verbosity(), shuffle=False,
            )
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError,
                tf.errors.NotFoundError) as e:
            failure = data_failure(e, self.source)
            if failure is None:
                raise
            raise failure from None

    def nan_error(self, last_epoch):
        """The ``TrainingError`` for a loss that became NaN, or None if it stayed finite."""
        if self.nan_guard.where is None:
            return None
        epoch, step = self.nan_guard.where
        return TrainingError(
            f"loss became NaN at epoch {epoch}, step {step}; stopped without saving that epoch "
            f"(last checkpoint: epoch {last_epoch}); try a lower --lr, --clip-grad-norm 1.0, or "
            "fp32"
        )

    def describe(self):
        s, c = self.schedule, self.config
        return (
            f"{self.runtime.name} x{self.runtime.num_replicas}: global batch {s.global_batch}, "
            f"{s.steps_per_epoch} steps/epoch, peak lr {s.peak_lr:.3g} (warm-up "
            f"{s.warmup_steps} steps, cosine to {c.min_lr:g}), weight decay {c.weight_decay}, "
            f"EMA {f'{s.ema_decay:.6g}' if c.ema else 'off'}, layer decay {c.layer_decay}, "
            f"precision {keras.config.dtype_policy().name}"
        )


def data_failure(error, source):
    """A one-line DataError for an input failure (naming the corrupt image file when there is
    one), or None when the error does not come from the data."""
    bad = data.find_unreadable(source.files) if source.files else None
    if bad is not None:
        return DataError(f"corrupt or unreadable image file {bad[0]}: {bad[1]}")
    if isinstance(error, tf.errors.DataLossError):
        return DataError(f"corrupt record in the dataset: {data.first_line(error.message)}")
    return None
