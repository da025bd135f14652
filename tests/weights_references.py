"""Independent reference implementations for the checkpoint tests, and files written by them.

Every format is proven against code that is not ours:

- Hugging Face transformers' ``ConvNextForImageClassification`` writes the HF files
  (``save_pretrained``) and gives reference logits;
- timm's ``ConvNeXt`` writes timm files (its own ``state_dict``) and gives reference logits;
  timm's ``checkpoint_filter_fn`` (its converter from facebookresearch checkpoints) certifies
  the official-format files: a file we write in the official layout must come back, through
  timm's converter and timm's strict ``load_state_dict``, as exactly the timm model's tensors;
- keras.applications' ConvNeXt writes keras.applications files (with Keras's own legacy-HDF5
  writer, the layout of its published ``.h5`` files, and with ``save_weights``) and gives
  reference logits on every backend.

timm imports torchvision for its data pipeline and BatchNorm freezing, never for ConvNeXt, and
no CPU build of torchvision installs beside this project's CPU torch; ``harness.import_timm``
lets those imports resolve to empty modules while timm is imported, then removes them again.
"""

import importlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import harness  # noqa: E402  (benchmarks/harness.py: importing timm without torchvision)

DEPTHS = (1, 1, 2, 1)
DIMS = (16, 24, 32, 40)
CLASSES = 5


def relative_error(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


# ---------------------------------------------------------------------------------------------
# torch models: randomize every tensor


def randomize_torch(module, seed):
    """Fills every parameter with random values: weights ~ N(0, 1/fan_in), biases ~ N(0, 0.2),
    norm scales and LayerScale gammas ~ 1 + N(0, 0.2) (never the 1e-6 that hides a block)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim >= 2:
                fan_in = int(np.prod(param.shape[1:]))
                param.copy_(noise / np.sqrt(fan_in))
            elif name.endswith("bias"):
                param.copy_(0.2 * noise)
            else:
                param.copy_(1.0 + 0.2 * noise)
    return module.eval()


def torch_logits(module, images_nhwc):
    import torch

    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
        out = module(x)
    out = getattr(out, "logits", out)
    return out.numpy()


def hf_model(seed, depths=DEPTHS, dims=DIMS, classes=CLASSES):
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(
        depths=list(depths), hidden_sizes=list(dims), num_labels=classes, layer_norm_eps=1e-6
    )
    return randomize_torch(ConvNextForImageClassification(config), seed)


# ---------------------------------------------------------------------------------------------
# timm


def import_timm():
    """timm's ConvNeXt module, or None if timm is not installed (``harness.import_timm``)."""
    timm = harness.import_timm()
    return None if timm is None else importlib.import_module("timm.models.convnext")


def timm_model(convnext, seed, depths=DEPTHS, dims=DIMS, classes=CLASSES, conv_mlp=False):
    model = convnext.ConvNeXt(
        depths=depths, dims=dims, num_classes=classes, conv_mlp=conv_mlp, ls_init_value=1e-6
    )
    return randomize_torch(model, seed)


def timm_to_official(convnext, timm_module):
    """The timm model's tensors under the official repositories' names (facebookresearch/
    ConvNeXt; ConvNeXt-V2's GRN as ``grn.gamma``/``grn.beta`` shaped (1, 1, 1, C)), certified by
    timm: timm's ``checkpoint_filter_fn`` must map them back to exactly the timm state dict,
    which timm's strict ``load_state_dict`` accepts."""
    import torch

    timm_state = timm_module.state_dict()
    official = {}
    for key, value in official_names(timm_state).items():
        if ".grn." in key:
            value = value.reshape(1, 1, 1, -1)
            key = key.replace("mlp.grn.weight", "grn.gamma").replace("mlp.grn.bias", "grn.beta")
        official[key] = value.clone()
    back = convnext.checkpoint_filter_fn({"model": official}, timm_module)
    assert sorted(back) == sorted(timm_state), "timm does not read these names as official"
    for key, value in back.items():
        assert torch.equal(value, timm_state[key]), key
    timm_module.load_state_dict(back, strict=True)
    return official


# ---------------------------------------------------------------------------------------------
# keras.applications


def keras_applications_model(
    seed, include_top=True, size=64, depths=DEPTHS, dims=DIMS, classes=CLASSES
):
    from keras.src.applications import convnext as applications

    model = applications.ConvNeXt(
        depths=list(depths),
        projection_dims=list(dims),
        name="convnext_custom",
        include_top=include_top,
        weights=None,
        input_shape=(size, size, 3),
        classes=classes,
        classifier_activation=None,
    )
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        if len(shape) >= 2:
            value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
        elif variable.path.endswith("bias") or variable.path.endswith("beta"):
            value = 0.2 * rng.normal(size=shape)
        else:  # LayerNorm gamma and LayerScale gamma
            value = 1.0 + 0.2 * rng.normal(size=shape)
        variable.assign(value.astype("float32"))
    return model


def save_legacy_h5(model, path):
    """The layout keras.applications' published ``.h5`` files have, by Keras's own writer."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


# ---------------------------------------------------------------------------------------------
# Every reference file, written once per test process.


class References:
    """Files written by the reference implementations, and their logits.

    ``files[id]`` is a path; ``logits[id]`` the reference logits for ``images`` (64 px, already
    normalized) or, for keras.applications files (``uses_pixels``), for ``pixels`` (0-255,
    normalized inside both models)."""

    def __init__(self, directory):
        rng = np.random.default_rng(0)
        self.dir = directory
        self.images = rng.normal(size=(2, 64, 64, 3)).astype("float32")
        self.images_96 = rng.normal(size=(1, 96, 96, 3)).astype("float32")
        self.pixels = rng.uniform(0, 255, size=(2, 64, 64, 3)).astype("float32")
        self.files, self.logits, self.uses_pixels = {}, {}, set()
        self.timm = None

    def path(self, *parts):
        import os

        path = os.path.join(self.dir, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def add(self, file_id, path, logits, pixels=False):
        self.files[file_id] = path
        self.logits[file_id] = logits
        if pixels:
            self.uses_pixels.add(file_id)


_REFERENCES = {}


def references():
    """The ``References`` of this process (built on first use, deleted at exit)."""
    if "refs" not in _REFERENCES:
        import atexit
        import shutil
        import tempfile

        directory = tempfile.mkdtemp(prefix="keras_convnext_weights_")
        atexit.register(shutil.rmtree, directory, True)
        refs = References(directory)
        _write_hf(refs)
        _write_timm(refs)
        _write_keras_applications(refs)
        _REFERENCES["refs"] = refs
    return _REFERENCES["refs"]


def _write_hf(refs):
    import torch
    from transformers import ConvNextForImageClassification

    model = hf_model(seed=0)
    refs.hf = model
    logits = torch_logits(model, refs.images)
    refs.hf_logits_96 = torch_logits(model, refs.images_96)
    with torch.no_grad():
        features = model.convnext(torch.from_numpy(refs.images.transpose(0, 3, 1, 2)))
    refs.hf_features = features.last_hidden_state.numpy().transpose(0, 2, 3, 1)
    model.save_pretrained(refs.path("hf", ""))
    refs.add("hf-safetensors", refs.path("hf", "model.safetensors"), logits)
    # transformers 5 writes only safetensors; pytorch_model.bin is torch.save of the state dict,
    # as transformers 4 wrote it. transformers must read it back to the same model.
    torch.save(model.state_dict(), refs.path("hf_bin", "pytorch_model.bin"))
    model.config.save_pretrained(refs.path("hf_bin", ""))
    reloaded = ConvNextForImageClassification.from_pretrained(refs.path("hf_bin", ""))
    assert np.array_equal(torch_logits(reloaded.eval(), refs.images), logits)
    refs.add("hf-bin", refs.path("hf_bin", "pytorch_model.bin"), logits)


def _write_timm(refs):
    import torch

    convnext = import_timm()
    if convnext is None:
        return
    refs.timm = convnext
    for seed, conv_mlp in ((1, False), (2, True)):
        model = timm_model(convnext, seed, conv_mlp=conv_mlp)
        tag = "conv-mlp" if conv_mlp else "linear-mlp"
        official = _write_timm_files(refs, model, tag, timm_to_official(convnext, model), ".pth")
        logits = refs.logits[f"official-{tag}"]
        if not conv_mlp:
            refs.official_state = official
            # A training checkpoint: "model" and "model_ema" differ; the EMA is the reference.
            other = {k: torch.flip(v, dims=[0]) for k, v in official.items()}
            torch.save({"model": other, "model_ema": official, "epoch": 3},
                       refs.path(tag, "official_train.pth"))
            refs.files["official-training"] = refs.path(tag, "official_train.pth")
            refs.logits["official-training"] = logits


def _write_timm_files(refs, model, tag, official, official_suffix):
    """The timm model's ``.safetensors`` and ``.pth`` and its ``official`` state dict (as the
    official repository saves it), with the timm model's logits; returns ``official``."""
    import safetensors.torch
    import torch

    logits = torch_logits(model, refs.images)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, refs.path(tag, "timm.safetensors"))
    refs.add(f"timm-{tag}-safetensors", refs.path(tag, "timm.safetensors"), logits)
    torch.save(state, refs.path(tag, "timm.pth"))
    refs.add(f"timm-{tag}-pth", refs.path(tag, "timm.pth"), logits)
    name = f"official{official_suffix}"
    torch.save({"model": official}, refs.path(tag, name))
    refs.add(f"official-{tag}", refs.path(tag, name), logits)
    return official


def _write_keras_applications(refs):
    import keras

    model = keras_applications_model(seed=3)
    logits = keras.ops.convert_to_numpy(model(refs.pixels))
    save_legacy_h5(model, refs.path("ka", "convnext_custom.h5"))
    refs.add("keras-applications-h5", refs.path("ka", "convnext_custom.h5"), logits, pixels=True)
    model.save_weights(refs.path("ka", "convnext_custom.weights.h5"))
    refs.add(
        "keras-applications-weights-h5",
        refs.path("ka", "convnext_custom.weights.h5"),
        logits,
        pixels=True,
    )
    notop = keras_applications_model(seed=4, include_top=False)
    # Its last layer is the head LayerNorm keras.applications keeps without a top; the features
    # before it are what our include_top=False model returns.
    before_norm = keras.Model(notop.input, notop.layers[-1].input)
    refs.ka_notop_features = keras.ops.convert_to_numpy(before_norm(refs.pixels))
    save_legacy_h5(notop, refs.path("ka", "convnext_custom_notop.h5"))
    refs.files["keras-applications-notop-h5"] = refs.path("ka", "convnext_custom_notop.h5")


# ---------------------------------------------------------------------------------------------
# ConvNeXt V2 (GRN) and isotropic ConvNeXt


def hf_v2_model(seed, depths=DEPTHS, dims=DIMS, classes=CLASSES):
    from transformers import ConvNextV2Config, ConvNextV2ForImageClassification

    config = ConvNextV2Config(
        depths=list(depths), hidden_sizes=list(dims), num_labels=classes, layer_norm_eps=1e-6
    )
    return randomize_torch(ConvNextV2ForImageClassification(config), seed)


def timm_v2_model(convnext, seed, depths=DEPTHS, dims=DIMS, classes=CLASSES, conv_mlp=False):
    model = convnext.ConvNeXt(depths=depths, dims=dims, num_classes=classes, conv_mlp=conv_mlp,
                              use_grn=True, ls_init_value=None)
    return randomize_torch(model, seed)


def grn_is_randomized(module):
    """Every GRN gamma and beta differs from zero (zeros would hide a wrong GRN)."""
    grn = {n: p for n, p in module.named_parameters() if "grn" in n}
    return bool(grn) and all(bool((p != 0).all()) for p in grn.values())


def official_names(timm_state):
    """timm's key names -> the official repositories' (shared by V1 and V2)."""
    import re

    out = {}
    for key, value in timm_state.items():
        name = key.replace("stem.", "downsample_layers.0.")
        name = re.sub(r"stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", name)
        name = re.sub(r"stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", name)
        name = name.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        name = name.replace("head.fc.", "head.").replace("head.norm.", "norm.")
        if "pwconv" in name and value.ndim == 4:  # the official MLP is nn.Linear
            value = value[:, :, 0, 0]
        out[name] = value
    return out


def isotropic_module(convnext, depth=2, dim=32, classes=CLASSES, layer_scale=None):
    """The official ``ConvNeXtIsotropic`` (facebookresearch/ConvNeXt
    ``models/convnext_isotropic.py``: a 16x16/16 conv stem with no norm, ``depth`` blocks at
    ``dim`` channels, global average pooling, LayerNorm, Linear) assembled from timm's
    ``ConvNeXtBlock``, which is the official ``Block``."""
    from torch import nn

    class Isotropic(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, dim, kernel_size=16, stride=16)
            self.blocks = nn.Sequential(*[
                convnext.ConvNeXtBlock(dim, ls_init_value=layer_scale, conv_mlp=False)
                for _ in range(depth)])
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.head = nn.Linear(dim, classes)

        def forward(self, x):
            x = self.blocks(self.stem(x))
            return self.head(self.norm(x.mean([-2, -1])))

    return Isotropic()


def isotropic_reference(convnext, seed, depth=2, dim=32, classes=CLASSES, layer_scale=None):
    """A randomized ``isotropic_module`` and its state dict under the official names."""
    import torch

    module = randomize_torch(isotropic_module(convnext, depth, dim, classes, layer_scale), seed)
    state = {}
    for key, value in module.state_dict().items():
        state[key.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")] = value.clone()
    with torch.no_grad():
        assert all(torch.isfinite(v).all() for v in state.values())
    return module, state


def write_v2_references(refs):
    """HF ConvNextV2 files, timm V2 files (Linear and 1x1-conv MLP), official V2 ``.pt``
    files and an official isotropic ``.pth``, with their reference logits."""
    import torch
    from transformers import ConvNextV2ForImageClassification

    model = hf_v2_model(seed=10)
    assert grn_is_randomized(model)
    logits = torch_logits(model, refs.images)
    model.save_pretrained(refs.path("hf_v2", ""))
    refs.add("v2-hf-safetensors", refs.path("hf_v2", "model.safetensors"), logits)
    refs.files["v2-hf-folder"] = refs.path("hf_v2", "")
    refs.logits["v2-hf-folder"] = logits
    torch.save(model.state_dict(), refs.path("hf_v2_bin", "pytorch_model.bin"))
    model.config.save_pretrained(refs.path("hf_v2_bin", ""))
    reloaded = ConvNextV2ForImageClassification.from_pretrained(refs.path("hf_v2_bin", ""))
    assert np.array_equal(torch_logits(reloaded.eval(), refs.images), logits)
    refs.add("v2-hf-bin", refs.path("hf_v2_bin", "pytorch_model.bin"), logits)

    convnext = import_timm()
    if convnext is None:
        return
    for seed, conv_mlp in ((11, False), (12, True)):
        model = timm_v2_model(convnext, seed, conv_mlp=conv_mlp)
        assert grn_is_randomized(model)
        tag = "v2-conv-mlp" if conv_mlp else "v2-linear-mlp"
        _write_timm_files(refs, model, tag, timm_to_official(convnext, model), ".pt")
    for layer_scale in (None, 1e-6):
        module, state = isotropic_reference(convnext, seed=13, layer_scale=layer_scale)
        tag = "iso-ls" if layer_scale else "iso"
        torch.save({"model": state}, refs.path(tag, "official.pth"))
        refs.add(f"official-{tag}", refs.path(tag, "official.pth"),
                 torch_logits(module, refs.images))
