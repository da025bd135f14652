"""The official checkpoints: facebookresearch/ConvNeXt (``convnext_tiny_1k_224_ema.pth``, the
isotropic ``convnext_iso_small_1k_224_ema.pth``) and facebookresearch/ConvNeXt-V2
(``convnextv2_tiny_1k_224_ema.pt``).

A dict ``{"model": state_dict}`` (training checkpoints add ``"model_ema"``). Keys:
``downsample_layers.0.{0,1}`` (stem conv, LayerNorm), ``downsample_layers.i.{0,1}`` (LayerNorm,
2x2 conv), ``stages.i.j.{dwconv,norm,pwconv1,pwconv2}`` and ``stages.i.j.gamma`` (LayerScale),
V2's ``stages.i.j.grn.{gamma,beta}`` (shaped (1, 1, 1, C)), ``norm`` (head LayerNorm) and
``head`` (classifier). The pointwise convs are ``nn.Linear``. The isotropic model has ``stem``
(a 16x16/16 conv, no norm) and ``blocks.j.*`` (one stage) instead of the downsampling layers and
stages.
"""

from keras_convnext.weights import converted as c

NAME = "official"
DESCRIPTION = "facebookresearch/ConvNeXt PyTorch checkpoint"

RULES = [
    (r"downsample_layers\.0\.0\.(weight|bias)", c.STEM_CONV, c.CONV),
    (r"downsample_layers\.0\.1\.(weight|bias)", c.STEM_NORM, c.NORM),
    (r"downsample_layers\.([1-3])\.0\.(weight|bias)", c.DOWNSAMPLE + "/norm", c.NORM),
    (r"downsample_layers\.([1-3])\.1\.(weight|bias)", c.DOWNSAMPLE + "/conv", c.CONV),
    (r"stages\.(\d+)\.(\d+)\.dwconv\.(weight|bias)", c.BLOCK + "/dwconv", c.DWCONV),
    (r"stages\.(\d+)\.(\d+)\.norm\.(weight|bias)", c.BLOCK + "/norm", c.NORM),
    (r"stages\.(\d+)\.(\d+)\.pwconv1\.(weight|bias)", c.BLOCK + "/pwconv1", c.LINEAR),
    (r"stages\.(\d+)\.(\d+)\.pwconv2\.(weight|bias)", c.BLOCK + "/pwconv2", c.LINEAR),
    (r"stages\.(\d+)\.(\d+)\.gamma", c.BLOCK + "/layer_scale", c.SCALE),
    (r"stages\.(\d+)\.(\d+)\.grn\.(gamma|beta)", c.BLOCK + "/grn", c.GRN),
    # isotropic: one stage (0) of blocks after a bare conv stem
    (r"stem\.(weight|bias)", c.STEM_CONV, c.CONV),
    (r"blocks\.(\d+)\.dwconv\.(weight|bias)", c.ISO_BLOCK + "/dwconv", c.DWCONV),
    (r"blocks\.(\d+)\.norm\.(weight|bias)", c.ISO_BLOCK + "/norm", c.NORM),
    (r"blocks\.(\d+)\.pwconv1\.(weight|bias)", c.ISO_BLOCK + "/pwconv1", c.LINEAR),
    (r"blocks\.(\d+)\.pwconv2\.(weight|bias)", c.ISO_BLOCK + "/pwconv2", c.LINEAR),
    (r"blocks\.(\d+)\.gamma", c.ISO_BLOCK + "/layer_scale", c.SCALE),
    (r"norm\.(weight|bias)", c.HEAD_NORM, c.NORM),
    (r"head\.(weight|bias)", c.PREDICTIONS, c.LINEAR),
]


def matches(keys):
    return any(k.startswith(("downsample_layers.0.", "blocks.0.dwconv.")) for k in keys)


def convert(state_dict):
    return c.convert_torch_state_dict(NAME, state_dict, RULES)
