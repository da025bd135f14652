"""``ConvNeXtBackbone``: ConvNeXt V1 / V2 as a ``keras_hub.models.FeaturePyramidBackbone``.

The graph is ``keras_convnext.builder.convnext_graph``'s (the same layers and names as
``keras_convnext.ConvNeXt``, so our checkpoint converters load into it), without the head and
without in-model normalization (keras-hub normalizes in the ``ImageConverter``). The stage
outputs are the pyramid: ``P2`` .. ``P5`` at strides 4, 8, 16, 32.
"""

import contextlib

import keras
from keras_hub.models import FeaturePyramidBackbone

from keras_convnext import architecture as arch
from keras_convnext.builder import convnext_graph

_DEFAULT = "default"  # layer_scale_init_value: 1e-6 for V1 blocks, none for V2 (GRN) blocks


def pyramid_level(stage):
    """The pyramid key of a stage's output: stage 0 (stride 4) is ``P2``, stage 3 ``P5``."""
    return f"P{stage + 2}"


@contextlib.contextmanager
def _building(dtype, data_format):
    """The global dtype policy and image data format the graph is built under (the builder reads
    both), restored afterwards."""
    policy, image_format = keras.config.dtype_policy(), keras.config.image_data_format()
    try:
        if isinstance(dtype, (str, keras.DTypePolicy)) and not isinstance(
                dtype, keras.dtype_policies.DTypePolicyMap):
            keras.config.set_dtype_policy(dtype)
        if data_format is not None:
            keras.config.set_image_data_format(data_format)
        yield
    finally:
        keras.config.set_dtype_policy(policy)
        keras.config.set_image_data_format(image_format)


def resolve_architecture(variant, depths, hidden_dims, use_grn, layer_scale_init_value):
    """``(depths, hidden_dims, use_grn, layer_scale_init_value)`` from a ``variant`` name of the
    family table or from explicit values (not both)."""
    if variant is not None:
        if depths is not None or hidden_dims is not None:
            raise ValueError("pass either variant= or depths= and hidden_dims=, not both")
        entry = arch.get_variant(variant)
        if entry.family == arch.ISOTROPIC:
            raise ValueError(
                f"{entry.model_name} is an isotropic ConvNeXt: one stage at stride 16, no feature "
                "pyramid; ConvNeXtBackbone takes the hierarchical V1 and V2 variants"
            )
        depths, hidden_dims = entry.depths, entry.dims
        if use_grn is None:
            use_grn = entry.family == arch.V2
        if layer_scale_init_value == _DEFAULT:
            layer_scale_init_value = entry.layer_scale
    elif depths is None or hidden_dims is None:
        raise ValueError(
            "ConvNeXtBackbone needs variant= (e.g. 'tiny', 'v2_atto') or depths= and hidden_dims="
        )
    use_grn = bool(use_grn)
    if layer_scale_init_value == _DEFAULT:
        layer_scale_init_value = None if use_grn else 1e-6
    return tuple(int(d) for d in depths), tuple(int(d) for d in hidden_dims), use_grn, \
        layer_scale_init_value


@keras.saving.register_keras_serializable(package="keras_convnext")
class ConvNeXtBackbone(FeaturePyramidBackbone):
    """ConvNeXt (V1, LayerScale) or ConvNeXt V2 (GRN) feature pyramid backbone for keras-hub.

    Args:
        depths: blocks per stage, four integers (Tiny: (3, 3, 9, 3)).
        hidden_dims: channels per stage, four integers (Tiny: (96, 192, 384, 768)).
        variant: instead of ``depths`` / ``hidden_dims``, a name from the family table
            (``"tiny"``, ``"convnext_small"``, ``"v2_atto"``, ``"ConvNeXtV2Nano"``).
        use_grn: ConvNeXt V2 blocks (GRN after the GELU); default: V2 for V2 variants.
        layer_scale_init_value: LayerScale init; default 1e-6 for V1 blocks, none for V2 blocks;
            None or 0 builds blocks without LayerScale.
        drop_path_rate: stochastic depth of the last block (rates rise linearly from 0).
        kernel_size: depthwise kernel size (7).
        image_shape: ``(H, W, C)`` of the inputs (H, W None for any size >= 32); normalized
            images, as the ``ConvNeXtImageConverter`` returns them.
        seed: seed of the stochastic depth layers.
        data_format: ``"channels_last"`` or ``"channels_first"`` (default: Keras's setting).
        dtype: dtype policy of the layers (``"bfloat16"``, ``"mixed_bfloat16"``, ...).

    The output is the last stage's feature map; ``pyramid_outputs`` holds every stage's,
    ``{"P2": stride 4, "P3": 8, "P4": 16, "P5": 32}``.
    """

    def __init__(
        self,
        depths=None,
        hidden_dims=None,
        *,
        variant=None,
        use_grn=None,
        layer_scale_init_value=_DEFAULT,
        drop_path_rate=0.0,
        kernel_size=7,
        image_shape=(None, None, 3),
        seed=None,
        data_format=None,
        dtype=None,
        **kwargs,
    ):
        depths, hidden_dims, use_grn, layer_scale_init_value = resolve_architecture(
            variant, depths, hidden_dims, use_grn, layer_scale_init_value)
        data_format = data_format or keras.config.image_data_format()
        name = kwargs.pop("name", None) or ("convnextv2" if use_grn else "convnext")
        with _building(dtype, data_format):
            graph = convnext_graph(
                depths, hidden_dims, layer_scale_init_value=layer_scale_init_value,
                kernel_size=kernel_size, use_grn=use_grn, include_top=False,
                include_preprocessing=False, input_shape=tuple(image_shape),
                drop_path_rate=drop_path_rate, seed=seed, model_name=name,
            )
        pyramid = {
            pyramid_level(stage): graph.get_layer(names[-1]).output
            for stage, names in arch.stage_layers(layer.name for layer in graph.layers)
        }
        super().__init__(inputs=graph.inputs[0], outputs=graph.outputs[0], dtype=dtype, name=name,
                         **kwargs)
        self.pyramid_outputs = pyramid

        self.depths = depths
        self.hidden_dims = hidden_dims
        self.use_grn = use_grn
        self.layer_scale_init_value = layer_scale_init_value
        self.drop_path_rate = drop_path_rate
        self.kernel_size = kernel_size
        self.image_shape = tuple(image_shape)
        self.seed = seed
        self.data_format = data_format

    @property
    def pyramid_levels(self):
        """``("P2", "P3", "P4", "P5")``."""
        return tuple(self.pyramid_outputs)

    def pyramid_output(self, level):
        """The feature map of pyramid ``level`` (``"P2"`` .. ``"P5"``, or 2 .. 5)."""
        key = f"P{level}" if isinstance(level, int) else str(level)
        if key not in self.pyramid_outputs:
            raise ValueError(
                f"ConvNeXtBackbone has pyramid levels {', '.join(self.pyramid_levels)} "
                f"(strides 4 to 32), not {level!r}"
            )
        return self.pyramid_outputs[key]

    def get_config(self):
        config = super().get_config()
        config.update({
            "depths": list(self.depths),
            "hidden_dims": list(self.hidden_dims),
            "use_grn": self.use_grn,
            "layer_scale_init_value": self.layer_scale_init_value,
            "drop_path_rate": self.drop_path_rate,
            "kernel_size": self.kernel_size,
            "image_shape": list(self.image_shape),
            "seed": self.seed,
            "data_format": self.data_format,
        })
        return config
