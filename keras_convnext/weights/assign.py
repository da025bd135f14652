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

    @property
    def variant(self):
        return arch.find_variant(self.depths, self.dims)

    @property
    def name(self):
        return f"convnext_{self.variant}" if self.variant else "convnext"

    def describe(self):
        what = f"convnext_{self.variant}" if self.variant else "a custom ConvNeXt"
        head = f", {_classes(self.classes)}" if self.classes else ", no classifier"
        return f"{what} (depths {self.depths}, dims {self.dims}{head})"


def _classes(n):
    return f"{n} classes" + (" (ImageNet-22k)" if n == IMAGENET_22K_CLASSES else "")


def architecture(shapes):
    """Depths, widths, classes of the ConvNeXt whose variables have ``shapes`` (path -> shape)."""
    blocks = [set() for _ in range(arch.NUM_STAGES)]
    for path in shapes:
        parsed = arch.parse(path)
        if parsed is not None and parsed.part == "block" and parsed.stage < arch.NUM_STAGES:
            blocks[parsed.stage].add(parsed.block)
    dims = []
    for stage in range(arch.NUM_STAGES):
        conv = (f"{STEM_CONV}/kernel" if stage == 0
                else f"{arch.downsample_name(stage)}/conv/kernel")
        dims.append(int(shapes[conv][-1]) if conv in shapes else None)
    classes = shapes.get(f"{PREDICTIONS}/kernel")
    kernel = shapes.get("stage_0_block_0/dwconv/kernel")
    return Architecture(
        depths=tuple(len(b) for b in blocks),
        dims=tuple(dims),
        classes=int(classes[-1]) if classes is not None else None,
        kernel_size=int(kernel[0]) if kernel is not None else 7,
        layer_scale=any(p.endswith("/layer_scale/gamma") for p in shapes),
    )


def plan(model_shapes, converted, *, skip_mismatched_head=False):
    """``(path -> array to assign, warnings)``; raises CheckpointError if the file does not fit."""
    arrays = dict(converted.arrays)
    shape_of = {path: tuple(np.shape(a)) for path, a in arrays.items()}
    model_head = [p for p in model_shapes if arch.is_head(p)]
    notes = []
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
    lines = [
        f"{converted.origin} does not fit the model: {len(missing)} missing, "
        f"{len(unexpected)} unexpected, {len(wrong)} of the wrong shape"
    ]
    if _backbone(file_arch) != _backbone(model_arch):
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
    return architecture_.depths, architecture_.dims


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
