"""The public constructors of the family, made from the table in ``keras_convnext.architecture``.

``ConvNeXtAtto`` ... ``ConvNeXtXLarge`` are generated, one per table row, with a real signature
(``inspect.signature``, ``help()`` and IDEs show the keyword arguments) and one shared docstring.
"""

import inspect

from keras_convnext.architecture import VARIANTS, Variant, get_variant  # noqa: F401
from keras_convnext.model import ConvNeXt

# The keyword arguments a variant constructor takes: ConvNeXt's (its __signature__, which
# lists the model options it forwards), less the architecture.
_ARCHITECTURE_ARGS = ("depths", "dims", "model_name", "kernel_size")
_PARAMETERS = [
    p for name, p in inspect.signature(ConvNeXt).parameters.items()
    if name not in _ARCHITECTURE_ARGS
]


def build(name, **kwargs):
    """Builds the variant ``name`` with keras.applications-style keyword arguments."""
    variant = get_variant(name)
    kwargs.setdefault("model_name", f"convnext_{variant.name}")
    return ConvNeXt(variant.depths, variant.dims, **kwargs)


_DOC = """Builds ConvNeXt-{title}: depths {depths}, widths {dims}.

    Takes the keyword arguments of ``keras_convnext.ConvNeXt`` (keras.applications conventions):
    include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
    classes=1000, classifier_activation="softmax", include_preprocessing=True,
    drop_path_rate=0.0 (paper: {drop}), layer_scale_init_value=1e-6, seed=None,
    skip_mismatched_head=False, name=None.
    """


def _constructor(variant):
    def constructor(**kwargs):
        return build(variant.name, **kwargs)

    title = variant.name.capitalize().replace("Xlarge", "XLarge")
    constructor.__name__ = constructor.__qualname__ = f"ConvNeXt{title}"
    constructor.__doc__ = _DOC.format(
        title=title, depths=variant.depths, dims=variant.dims, drop=variant.default_drop_path_rate
    )
    constructor.__signature__ = inspect.Signature(_PARAMETERS)
    return constructor


ConvNeXtAtto = _constructor(VARIANTS["atto"])
ConvNeXtFemto = _constructor(VARIANTS["femto"])
ConvNeXtPico = _constructor(VARIANTS["pico"])
ConvNeXtNano = _constructor(VARIANTS["nano"])
ConvNeXtTiny = _constructor(VARIANTS["tiny"])
ConvNeXtSmall = _constructor(VARIANTS["small"])
ConvNeXtBase = _constructor(VARIANTS["base"])
ConvNeXtLarge = _constructor(VARIANTS["large"])
ConvNeXtXLarge = _constructor(VARIANTS["xlarge"])
