"""timm's ConvNeXt checkpoints (``model.safetensors`` on the Hub, ``.pth`` release files).

Keys: ``stem.{0,1}``, ``stages.i.downsample.{0,1}``, ``stages.i.blocks.j.{conv_dw,norm,
mlp.fc1,mlp.fc2,gamma}`` (V2: ``mlp.grn.{weight,bias}`` shaped (C,), no gamma), ``head.norm``,
``head.fc``. The MLP is ``nn.Linear`` (out, in), or a 1x1 ``nn.Conv2d`` (out, in, 1, 1) in models
built with ``conv_mlp=True`` (atto ... nano, V1 and V2).
"""

from keras_convnext.weights import converted as c

NAME = "timm"
DESCRIPTION = "timm checkpoint"

RULES = [
    (r"stem\.0\.(weight|bias)", c.STEM_CONV, c.CONV),
    (r"stem\.1\.(weight|bias)", c.STEM_NORM, c.NORM),
    (r"stages\.([1-3])\.downsample\.0\.(weight|bias)", c.DOWNSAMPLE + "/norm", c.NORM),
    (r"stages\.([1-3])\.downsample\.1\.(weight|bias)", c.DOWNSAMPLE + "/conv", c.CONV),
    (r"stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.(weight|bias)", c.BLOCK + "/dwconv",
     c.DWCONV),
    (r"stages\.(\d+)\.blocks\.(\d+)\.norm\.(weight|bias)", c.BLOCK + "/norm", c.NORM),
    (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", c.BLOCK + "/pwconv1",
     c.LINEAR),
    (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", c.BLOCK + "/pwconv2",
     c.LINEAR),
    (r"stages\.(\d+)\.blocks\.(\d+)\.gamma", c.BLOCK + "/layer_scale", c.SCALE),
    (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.(weight|bias)", c.BLOCK + "/grn", c.GRN),
    (r"head\.norm\.(weight|bias)", c.HEAD_NORM, c.NORM),
    (r"head\.fc\.(weight|bias)", c.PREDICTIONS, c.LINEAR),
]


def matches(keys):
    return any(k.startswith(("stem.0.", "stages.0.blocks.")) for k in keys)


def convert(state_dict):
    return c.convert_torch_state_dict(NAME, state_dict, RULES)
