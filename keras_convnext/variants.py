"""The public constructors of every family, made from the tables in
``keras_convnext.architecture``: ``ConvNeXtAtto`` ... ``ConvNeXtXLarge``, ``ConvNeXtV2Atto`` ...
``ConvNeXtV2Huge``, ``ConvNeXtIsotropicSmall`` ... ``ConvNeXtIsotropicLarge``.

Each is generated from its table row, with a real signature (``inspect.signature``, ``help()``
and IDEs show the keyword arguments) and one docstring per family.
"""

import inspect

from keras_convnext.architecture import (  # noqa: F401  (the tables, re-exported)
    ALL_VARIANTS,
    ISOTROPIC,
    ISOTROPIC_VARIANTS,
    V1,
    V2,
    V2_VARIANTS,
    VARIANTS,
    Variant,
    get_variant,
)
from keras_convnext.model import ConvNeXt, ConvNeXtIsotropic, ConvNeXtV2

_BUILDERS = {V1: ConvNeXt, V2: ConvNeXtV2, ISOTROPIC: ConvNeXtIsotropic}
# The keyword arguments a variant constructor takes: its builder's (their __signature__ lists
# the model options they forward), less the architecture.
_ARCHITECTURE_ARGS = ("depths", "dims", "depth", "dim", "model_name", "kernel_size")


def build(name, **kwargs):
    """Builds the variant ``name`` of any family with keras.applications-style keyword
    arguments; LayerScale defaults to the variant's official setting."""
    variant = get_variant(name)
    kwargs.setdefault("model_name", variant.model_name)
    kwargs.setdefault("layer_scale_init_value", variant.layer_scale)
    if variant.family == ISOTROPIC:
        return ConvNeXtIsotropic(variant.depths[0], variant.dims[0], **kwargs)
    return _BUILDERS[variant.family](variant.depths, variant.dims, **kwargs)


_DOC = """Builds {model}: {architecture}.

    Takes the keyword arguments of ``keras_convnext.{builder}`` (keras.applications
    conventions): include_top=True, weights=None ("imagenet", or any checkpoint file),
    input_tensor=None, input_shape=None, pooling=None, classes=1000,
    classifier_activation="softmax", include_preprocessing=True, drop_path_rate=0.0
    (paper: {drop}), layer_scale_init_value={layer_scale}, seed=None,
    skip_mismatched_head=False, name=None.
    """


def _constructor(variant):
    def constructor(**kwargs):
        return build(variant.name, **kwargs)

    builder = _BUILDERS[variant.family]
    if variant.family == ISOTROPIC:
        architecture = f"{variant.depths[0]} blocks at width {variant.dims[0]}, 16x16 patches"
    else:
        architecture = f"depths {variant.depths}, widths {variant.dims}"
    constructor.__name__ = constructor.__qualname__ = variant.constructor_name
    constructor.__doc__ = _DOC.format(
        model=variant.model_name, architecture=architecture, builder=builder.__name__,
        drop=variant.default_drop_path_rate, layer_scale=variant.layer_scale,
    )
    constructor.__signature__ = inspect.Signature([
        p.replace(default=variant.layer_scale) if name == "layer_scale_init_value" else p
        for name, p in inspect.signature(builder).parameters.items()
        if name not in _ARCHITECTURE_ARGS
    ])
    return constructor


ConvNeXtAtto = _constructor(ALL_VARIANTS["atto"])
ConvNeXtFemto = _constructor(ALL_VARIANTS["femto"])
ConvNeXtPico = _constructor(ALL_VARIANTS["pico"])
ConvNeXtNano = _constructor(ALL_VARIANTS["nano"])
ConvNeXtTiny = _constructor(ALL_VARIANTS["tiny"])
ConvNeXtSmall = _constructor(ALL_VARIANTS["small"])
ConvNeXtBase = _constructor(ALL_VARIANTS["base"])
ConvNeXtLarge = _constructor(ALL_VARIANTS["large"])
ConvNeXtXLarge = _constructor(ALL_VARIANTS["xlarge"])
ConvNeXtV2Atto = _constructor(ALL_VARIANTS["v2_atto"])
ConvNeXtV2Femto = _constructor(ALL_VARIANTS["v2_femto"])
ConvNeXtV2Pico = _constructor(ALL_VARIANTS["v2_pico"])
ConvNeXtV2Nano = _constructor(ALL_VARIANTS["v2_nano"])
ConvNeXtV2Tiny = _constructor(ALL_VARIANTS["v2_tiny"])
ConvNeXtV2Base = _constructor(ALL_VARIANTS["v2_base"])
ConvNeXtV2Large = _constructor(ALL_VARIANTS["v2_large"])
ConvNeXtV2Huge = _constructor(ALL_VARIANTS["v2_huge"])
ConvNeXtIsotropicSmall = _constructor(ALL_VARIANTS["isotropic_small"])
ConvNeXtIsotropicBase = _constructor(ALL_VARIANTS["isotropic_base"])
ConvNeXtIsotropicLarge = _constructor(ALL_VARIANTS["isotropic_large"])
