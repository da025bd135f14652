"""Where the model runs: a tf.distribute strategy (TensorFlow), keras.distribution data
parallelism (JAX), or one device (PyTorch).

``--strategy``:

=============  ==================================================================================
``auto``       TF: TPUStrategy when a TPU is configured (``TPU_NAME`` or a TPU VM's /dev/accel0),
               MultiWorkerMirroredStrategy when TF_CONFIG names several tasks, MirroredStrategy
               for several GPUs, else the default strategy. JAX: DataParallel over all devices
               when there are several. PyTorch: one device.
``default``    no distribution.
``mirrored``   TF MirroredStrategy over all GPUs (or, without GPUs, all logical CPUs: see
               ``--cpu-devices``); JAX DataParallel.
``multiworker``TF MultiWorkerMirroredStrategy from TF_CONFIG; JAX DataParallel over every
               process's devices (after ``keras.distribution.initialize()``).
``tpu``        TF TPUStrategy; JAX DataParallel over the TPU devices.
=============  ==================================================================================

``--model-parallel N`` (JAX): ``keras.distribution.ModelParallel`` on a (devices / N, N) mesh,
the batch split over the first axis and every block's pointwise layers over the N devices of the
second (``keras_convnext.distribution``): for models whose weights and optimizer state do not fit
one device.

The global batch is ``batch_size * replicas`` and the learning rate scales with it (train.py).

``--mixed-precision auto`` (``dtype_policy``) is bf16 where the PyTorch backend runs on a CPU
that multiplies bf16 natively (AMX or AVX-512 BF16: oneDNN's bf16 GEMMs are 3-6x its fp32 ones
at the Fashion-MNIST preset's shapes, the whole step 1.6x; benchmarks/RESULTS.md) and fp32
elsewhere: an AVX2-only CPU emulates bf16, TensorFlow's bf16 step measured 0.8x its fp32 one and
JAX's 1.03x on that CPU, and on an accelerator the choice is left to the user.
"""

import contextlib
import dataclasses
import json
import os
import typing

import keras

from training.config import MIXED_PRECISION, ConfigError

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bf16 products


@dataclasses.dataclass
class Runtime:
    """The chosen distribution: a scope to build in, the replica count, and who writes files."""

    name: str
    num_replicas: int = 1
    is_chief: bool = True
    worker_index: int = 0
    tf_strategy: typing.Any = None

    def scope(self):
        if self.tf_strategy is None:
            return contextlib.nullcontext()
        return self.tf_strategy.scope()


def _tf_config():
    try:
        return json.loads(os.environ.get("TF_CONFIG", "") or "{}")
    except json.JSONDecodeError:
        raise ConfigError("TF_CONFIG is not valid JSON") from None


def _multiworker_cluster(tf_config):
    cluster = tf_config.get("cluster", {})
    return sum(len(cluster.get(k, [])) for k in ("chief", "worker")) > 1


def _split_cpu(tf, count):
    if not count:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError:
        pass  # already initialized (e.g. a second run in one process): keep what exists


def _tf_runtime(name, cpu_devices):
    import tensorflow as tf

    tf_config = _tf_config()
    if name == "auto":
        if os.environ.get("TPU_NAME") or os.path.exists("/dev/accel0"):
            name = "tpu"
        elif _multiworker_cluster(tf_config):
            name = "multiworker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "multiworker":
        if not tf_config.get("cluster"):
            raise ConfigError("strategy=multiworker needs TF_CONFIG with a cluster")
        _split_cpu(tf, cpu_devices)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        resolver = strategy.cluster_resolver
        task_type, task_id = resolver.task_type, resolver.task_id
        cluster = tf_config.get("cluster", {})
        is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0
                                            and "chief" not in cluster)
        return Runtime("multiworker", strategy.num_replicas_in_sync, is_chief, task_id or 0,
                       strategy)
    _split_cpu(tf, cpu_devices)
    if name == "tpu":
        tpu = "local" if os.path.exists("/dev/accel0") and not os.environ.get("TPU_NAME") else (
            os.environ.get("TPU_NAME"))
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
        return Runtime("tpu", strategy.num_replicas_in_sync, True, 0, strategy)
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        return Runtime("mirrored", strategy.num_replicas_in_sync, True, 0, strategy)
    return Runtime("default", 1, True, 0, None)


def _jax_runtime(name, model_parallel=None):
    import jax

    if name == "multiworker":
        keras.distribution.initialize()
    devices = jax.devices()
    if model_parallel:
        from keras_convnext.distribution import model_parallel as sharded

        try:
            distribution = sharded(model_parallel, devices)
        except ValueError as e:
            raise ConfigError(f"bad config value: {e}") from None
        keras.distribution.set_distribution(distribution)
        replicas = len(devices) // model_parallel
        return Runtime(f"jax-model-parallel ({replicas} x {model_parallel} devices)", replicas,
                       jax.process_index() == 0, jax.process_index())
    if name == "default" or (name == "auto" and len(devices) == 1):
        keras.distribution.set_distribution(None)  # a previous run's, in this process
        return Runtime("default")
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return Runtime(f"jax-data-parallel ({len(devices)} devices)", len(devices),
                   jax.process_index() == 0, jax.process_index())


def adapt_model(runtime, model):
    """Works around two Keras (3.15) defects under MultiWorkerMirroredStrategy, both in code
    that only reads shapes or reduces logged metrics (the gradients' all-reduce is untouched):

    * before the first step, ``fit`` reduces a distributed batch with ``strategy.reduce`` just
      to learn its shapes, which collective strategies reject ("Attempt to convert a value
      (PerReplica...)"): the first replica's part has the same structure and shapes;
    * the per-step logs are averaged with ``strategy.reduce("MEAN", v, axis=0)``, which fails
      on scalars ("Invalid reduction dimension 0"): scalars are averaged with ``axis=None``.
    """
    if runtime.name != "multiworker":
        return
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    def first_replica(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return model.distribute_strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = keras.tree.map_structure(first_replica, next(it))
                break
        with model.distribute_strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = maybe_symbolic_build
    original = getattr(tf_trainer.reduce_per_replica, "__wrapped__", tf_trainer.reduce_per_replica)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(
                strategy):
            def mean(value):
                rank = first_replica(value).shape.rank
                return strategy.reduce("MEAN", value, axis=None if rank == 0 else 0)

            return keras.tree.map_structure(mean, values)
        return original(values, strategy, reduction)

    reduce_per_replica.__wrapped__ = original
    tf_trainer.reduce_per_replica = reduce_per_replica


def select(name="auto", cpu_devices=None, model_parallel=None):
    """The ``Runtime`` for ``--strategy name`` on the current Keras backend (call it first:
    TensorFlow's multi-worker and logical-device setup must precede any other TF work).
    ``model_parallel=N`` (JAX): ``keras_convnext.distribution.model_parallel`` over N devices
    per model replica."""
    backend = keras.backend.backend()
    if model_parallel and backend != "jax":
        raise ConfigError(f"model_parallel needs the jax backend (keras.distribution), "
                          f"not {backend}")
    if backend == "tensorflow":
        return _tf_runtime(name, cpu_devices)
    if backend == "jax":
        return _jax_runtime(name, model_parallel)
    if name not in ("auto", "default"):
        raise ConfigError(
            f"strategy={name} needs the tensorflow or jax backend; {backend} runs on one device"
        )
    return Runtime("default")


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _accelerator_present():
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    if backend == "jax":
        import jax

        return jax.default_backend() != "cpu"
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))


def dtype_policy(choice):
    """The Keras dtype policy name for ``--mixed-precision`` ``choice`` (None: fp32), with
    ``auto`` resolved on this machine: bf16 for PyTorch on a CPU with ``BF16_CPU_FLAGS``, else
    fp32."""
    if choice == "auto":
        native = (keras.backend.backend() == "torch" and not _accelerator_present()
                  and bool(cpu_flags() & set(BF16_CPU_FLAGS)))
        choice = "bf16" if native else "fp32"
    return MIXED_PRECISION[choice or "fp32"]
