"""Hugging Face transformers ConvNext and ConvNextV2 checkpoints (``model.safetensors``,
``pytorch_model.bin``).

Keys of ``ConvNextForImageClassification`` (``ConvNextV2...``: prefix ``convnextv2.``, blocks with
``grn.{weight,bias}`` shaped (1, 1, 1, C) and no ``layer_scale_parameter``):
``convnext.embeddings.{patch_embeddings,layernorm}``,
``convnext.encoder.stages.i.downsampling_layer.{0,1}`` (LayerNorm, conv),
``convnext.encoder.stages.i.layers.j.{dwconv,layernorm,pwconv1,pwconv2,layer_scale_parameter}``,
``convnext.layernorm`` and ``classifier``. A bare ``ConvNextModel`` has the same keys without the
``convnext.`` prefix and no classifier.
"""

from keras_convnext.weights import converted as c

NAME = "hf"
DESCRIPTION = "Hugging Face transformers ConvNext checkpoint"

_P = r"(?:convnext(?:v2)?\.)?"
_L = _P + r"encoder\.stages\.(\d+)\.layers\.(\d+)\."
RULES = [
    (_P + r"embeddings\.patch_embeddings\.(weight|bias)", c.STEM_CONV, c.CONV),
    (_P + r"embeddings\.layernorm\.(weight|bias)", c.STEM_NORM, c.NORM),
    (_P + r"encoder\.stages\.([1-3])\.downsampling_layer\.0\.(weight|bias)",
     c.DOWNSAMPLE + "/norm", c.NORM),
    (_P + r"encoder\.stages\.([1-3])\.downsampling_layer\.1\.(weight|bias)",
     c.DOWNSAMPLE + "/conv", c.CONV),
    (_L + r"dwconv\.(weight|bias)", c.BLOCK + "/dwconv", c.DWCONV),
    (_L + r"layernorm\.(weight|bias)", c.BLOCK + "/norm", c.NORM),
    (_L + r"pwconv1\.(weight|bias)", c.BLOCK + "/pwconv1", c.LINEAR),
    (_L + r"pwconv2\.(weight|bias)", c.BLOCK + "/pwconv2", c.LINEAR),
    (_L + r"layer_scale_parameter", c.BLOCK + "/layer_scale", c.SCALE),
    (_L + r"grn\.(weight|bias)", c.BLOCK + "/grn", c.GRN),
    (_P + r"layernorm\.(weight|bias)", c.HEAD_NORM, c.NORM),
    (r"classifier\.(weight|bias)", c.PREDICTIONS, c.LINEAR),
]


def matches(keys):
    return any(
        k.startswith(("convnext.embeddings.", "convnextv2.embeddings.",
                      "embeddings.patch_embeddings."))
        for k in keys
    )


def convert(state_dict):
    return c.convert_torch_state_dict(NAME, state_dict, RULES)
