"""Setting a model's variables from converted arrays, strictly.

Every variable of the model is set exactly once and every tensor of the file is used, or
nothing is set and a ``CheckpointError`` lists what is missing, unexpected or of the wrong
shape, and which variant the file looks like. The classifier head is the one exception, and
only on request: ``include_top=False`` models drop it, and ``skip_mismatched_head=True`` keeps
a freshly initialized head when the checkpoint's does not fit (fine-tuning on new classes).
"""

import dataclasses
import warnings

import numpy as np

from keras_convnext import architecture as arch
from keras_convnext.weights.converted import PREDICTIONS, STEM_CONV
from keras_convnext.weights.files import CheckpointError

IMAGENET_22K_CLASSES = 21841
_LISTED = 10


@dataclasses.dataclass(frozen=True)
class Architecture:
    depths: tuple
    dims: tuple
    classes: object  # int, or None without a classifier
    kernel_size: object
    layer_scale: bool
    grn: bool = False
    stem_patch: int = 4

    @property
    def family(self):
        """``architecture.V1``, ``V2`` (GRN blocks) or ``ISOTROPIC`` (one stage)."""
        if len(self.depths) == 1 and self.depths[0] > 0:
            return arch.ISOTROPIC
        return arch.V2 if self.grn else arch.V1

    @property
    def variant(self):
        return arch.find_variant(self.depths, self.dims, self.family)

    @property
    def name(self):
        if self.variant:
            return arch.get_variant(self.variant).model_name
        return {arch.V1: "convnext", arch.V2: "convnextv2", arch.ISOTROPIC: "convnext_isotropic"}[
            self.family]

    def describe(self):
        family = arch.FAMILY_NAMES[self.family]
        what = self.name if self.variant else f"a custom {family}"
        head = f", {_classes(self.classes)}" if self.classes else ", no classifier"
        return f"{what} (depths {self.depths}, dims {self.dims}{head})"


def _classes(n):
    return f"{n} classes" + (" (ImageNet-22k)" if n == IMAGENET_22K_CLASSES else "")


def architecture(shapes):
    """Family, depths, widths, classes of the ConvNeXt whose variables have ``shapes``
    (path -> shape)."""
    blocks = {}
    for path in shapes:
        parsed = arch.parse(path)
        if parsed is not None and parsed.part == "block":
            blocks.setdefault(parsed.stage, set()).add(parsed.block)
    stem = shapes.get(f"{STEM_CONV}/kernel")
    stage_count = arch.NUM_STAGES
    if stem is not None and stem[0] != 4 and set(blocks) <= {0}:
        stage_count = 1  # the isotropic model: a bare large-patch stem and one stage
    dims = []
    for stage in range(stage_count):
        conv = (f"{STEM_CONV}/kernel" if stage == 0
                else f"{arch.downsample_name(stage)}/conv/kernel")
        dims.append(int(shapes[conv][-1]) if conv in shapes else None)
    classes = shapes.get(f"{PREDICTIONS}/kernel")
    kernel = shapes.get("stage_0_block_0/dwconv/kernel")
    return Architecture(
        depths=tuple(len(blocks.get(stage, ())) for stage in range(stage_count)),
        dims=tuple(dims),
        classes=int(classes[-1]) if classes is not None else None,
        kernel_size=int(kernel[0]) if kernel is not None else 7,
        layer_scale=any(p.endswith("/layer_scale/gamma") for p in shapes),
        grn=any("/grn/" in p for p in shapes),
        stem_patch=int(stem[0]) if stem is not None else 4,
    )


def _family_mismatch(file_arch, model_arch):
    """The first line's explanation when file and model are of different families, or None."""
    if file_arch.family == model_arch.family:
        return None
    families = {file_arch.family, model_arch.family}
    kind = "a V1/V2 mismatch" if families == {arch.V1, arch.V2} else "a family mismatch"
    return (f"{kind}: the file is a {arch.FAMILY_NAMES[file_arch.family]} checkpoint, the model "
            f"a {arch.FAMILY_NAMES[model_arch.family]}")


def adapt_input_conv(kernel, channels, base_channels=3):
    """A pretrained stem kernel (k, k, ``base_channels``, out) for ``channels`` input channels,
    exactly as timm's ``adapt_input_conv``: summed over the input channels for one channel;
    otherwise repeated to ``channels`` and scaled by ``base_channels / channels``."""
    kernel = np.asarray(kernel, np.float32)
    if channels == base_channels:
        return kernel
    if channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    repeat = -(-channels // base_channels)
    return np.tile(kernel, (1, 1, repeat, 1))[:, :, :channels] * (base_channels / channels)


def _adapt_stem(arrays, model_shapes, origin):
    """Adapts a 3-channel stem kernel to the model's input channels; returns the note, or None
    when there is nothing to adapt."""
    path = f"{STEM_CONV}/kernel"
    file_shape, model_shape = tuple(np.shape(arrays.get(path, ()))), model_shapes.get(path)
    if (model_shape is None or len(file_shape) != 4 or file_shape == model_shape
            or file_shape[2] != 3 or file_shape[:2] + file_shape[3:] != model_shape[:2]
            + model_shape[3:]):
        return None
    arrays[path] = adapt_input_conv(arrays[path], model_shape[2])
    how = "summed over RGB" if model_shape[2] == 1 else "repeated and rescaled by 3/C"
    return (f"{origin}: adapted the stem's 3-channel kernel to the model's {model_shape[2]} input "
            f"channel(s) ({how}, as timm's adapt_input_conv)")


def plan(model_shapes, converted, *, skip_mismatched_head=False):
    """``(path -> array to assign, warnings)``; raises CheckpointError if the file does not fit."""
    arrays = dict(converted.arrays)
    adapted = _adapt_stem(arrays, model_shapes, converted.origin)
    notes = [adapted] if adapted else []
    shape_of = {path: tuple(np.shape(a)) for path, a in arrays.items()}
    model_head = [p for p in model_shapes if arch.is_head(p)]
    if not model_head:  # include_top=False: the checkpoint's head is not wanted
        arrays = {p: a for p, a in arrays.items() if not arch.is_head(p)}
    head_misfits = [p for p in model_head if shape_of.get(p) != model_shapes[p]]
    if head_misfits and skip_mismatched_head:
        for path in [p for p in arrays if arch.is_head(p)]:
            if path in head_misfits or path not in model_shapes:
                del arrays[path]
        notes.append(
            f"{converted.origin}: the checkpoint's head "
            f"({_head_of(shape_of)}) does not fit the model's "
            f"({_classes(model_shapes[f'{PREDICTIONS}/kernel'][-1])}); kept the freshly "
            f"initialized {', '.join(head_misfits)} (skip_mismatched_head=True)"
        )
    fresh = set(head_misfits) if skip_mismatched_head else set()

    missing = [p for p in model_shapes if p not in arrays and p not in fresh]
    unexpected = [
        f"{converted.sources[p]} (as {p})" for p in arrays if p not in model_shapes
    ] + list(converted.unexpected)
    wrong = [
        (p, shape_of[p], model_shapes[p])
        for p in arrays
        if p in model_shapes and shape_of[p] != model_shapes[p]
    ]
    if not (missing or unexpected or wrong or converted.problems):
        return arrays, notes

    file_arch = architecture(shape_of)
    model_arch = architecture(model_shapes)
    only_head = (
        not unexpected
        and not converted.problems
        and all(arch.is_head(p) for p in missing)
        and all(arch.is_head(p) for p, _, _ in wrong)
    )
    if only_head:
        raise CheckpointError(_head_message(converted.origin, shape_of, model_shapes))
    mismatch = _family_mismatch(file_arch, model_arch)
    lines = [
        f"{converted.origin} does not fit the model"
        + (f" ({mismatch})" if mismatch else "")
        + f": {len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of the wrong "
        "shape"
    ]
    if _backbone(file_arch) != _backbone(model_arch) or mismatch:
        lines.append(
            f"  the file looks like {file_arch.describe()}; the model is {model_arch.describe()}"
        )
    lines += _listing("missing from the file", missing)
    lines += _listing("unexpected in the file", unexpected)
    lines += _listing(
        "shape mismatches",
        [f"{p}: file {fs} vs model {ms}" for p, fs, ms in wrong],
    )
    lines += _listing("unreadable tensors", converted.problems)
    raise CheckpointError("\n".join(lines))


def _backbone(architecture_):
    return architecture_.family, architecture_.depths, architecture_.dims


def _head_of(shapes):
    kernel = shapes.get(f"{PREDICTIONS}/kernel")
    return _classes(kernel[-1]) if kernel else "none"


def _head_message(origin, file_shapes, model_shapes):
    model_classes = model_shapes[f"{PREDICTIONS}/kernel"][-1]
    fix = (
        "or load with keras_convnext.load_weights(model, weights, skip_mismatched_head=True) "
        "to keep a freshly initialized head for fine-tuning"
    )
    kernel = file_shapes.get(f"{PREDICTIONS}/kernel")
    if kernel is None:
        return (
            f"{origin} has no classifier head (an include_top=False checkpoint) but the model "
            f"has one ({_classes(model_classes)}): build the model with include_top=False, {fix}"
        )
    return (
        f"{origin} has a classifier for {_classes(kernel[-1])} but the model's has "
        f"{_classes(model_classes)}: build the model with classes={kernel[-1]}, {fix}"
    )


def _listing(title, items):
    if not items:
        return []
    shown = [f"    {item}" for item in items[:_LISTED]]
    if len(items) > _LISTED:
        shown.append(f"    ... and {len(items) - _LISTED} more")
    return [f"  {title}:"] + shown


def assign(model, converted, *, skip_mismatched_head=False):
    """Sets ``model``'s variables from ``converted`` (see ``plan``); returns ``model``."""
    variables = {v.path: v for v in model.weights}
    arrays, notes = plan(
        {p: tuple(v.shape) for p, v in variables.items()},
        converted,
        skip_mismatched_head=skip_mismatched_head,
    )
    for path, array in arrays.items():
        variables[path].assign(np.asarray(array, dtype=np.float32))
    for note in notes:
        warnings.warn(note, stacklevel=3)
    return model
