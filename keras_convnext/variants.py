"""The ConvNeXt family as one table, and the public constructors made from it.

Depths and widths are the paper's (T, S, B, L, XL) and timm's small variants (atto ... nano).
``default_drop_path_rate`` is the paper's ImageNet-1k stochastic depth for the variant (the
constructors themselves default to 0.0, like keras.applications: it is a training choice).
"""

import dataclasses

from keras_convnext.model import ConvNeXt


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    depths: tuple
    dims: tuple
    default_drop_path_rate: float = 0.0


VARIANTS = {
    v.name: v
    for v in (
        Variant("atto", (2, 2, 6, 2), (40, 80, 160, 320), 0.0),
        Variant("femto", (2, 2, 6, 2), (48, 96, 192, 384), 0.0),
        Variant("pico", (2, 2, 6, 2), (64, 128, 256, 512), 0.0),
        Variant("nano", (2, 2, 8, 2), (80, 160, 320, 640), 0.0),
        Variant("tiny", (3, 3, 9, 3), (96, 192, 384, 768), 0.1),
        Variant("small", (3, 3, 27, 3), (96, 192, 384, 768), 0.4),
        Variant("base", (3, 3, 27, 3), (128, 256, 512, 1024), 0.5),
        Variant("large", (3, 3, 27, 3), (192, 384, 768, 1536), 0.5),
        Variant("xlarge", (3, 3, 27, 3), (256, 512, 1024, 2048), 0.5),
    )
}


def get_variant(name):
    """The table entry for ``name`` ("tiny", "convnext_tiny" or "ConvNeXtTiny" all work)."""
    key = str(name).lower().replace("convnext", "").strip("_-")
    if key not in VARIANTS:
        raise ValueError(
            f"unknown ConvNeXt variant {name!r}; choose one of {', '.join(VARIANTS)}"
        )
    return VARIANTS[key]


def build(name, **kwargs):
    """Builds the variant ``name`` with keras.applications-style keyword arguments."""
    variant = get_variant(name)
    kwargs.setdefault("model_name", f"convnext_{variant.name}")
    return ConvNeXt(variant.depths, variant.dims, **kwargs)


_DOC = """Builds ConvNeXt-{title}: depths {depths}, widths {dims}.

    Takes the keyword arguments of ``keras_convnext.ConvNeXt`` (keras.applications conventions):
    include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
    classes=1000, classifier_activation="softmax", include_preprocessing=True,
    drop_path_rate=0.0 (paper: {drop}), layer_scale_init_value=1e-6, seed=None.
    """


def _constructor(variant):
    def constructor(**kwargs):
        return build(variant.name, **kwargs)

    title = variant.name.capitalize().replace("Xlarge", "XLarge")
    constructor.__name__ = constructor.__qualname__ = f"ConvNeXt{title}"
    constructor.__doc__ = _DOC.format(
        title=title, depths=variant.depths, dims=variant.dims, drop=variant.default_drop_path_rate
    )
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
