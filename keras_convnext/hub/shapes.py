"""A small synthetic detection / segmentation set: squares and discs drawn on noisy images,
with their masks and boxes known exactly (for tests, the notebook, quick smoke runs).

``shapes(count)`` returns a dict: ``images`` (N, S, S, 3) float32 in 0-255, ``masks``
(N, S, S, 1) int32 with 0 background, 1 square, 2 disc, and ``boxes`` (N, M, 4) float32
``yxyx`` pixel boxes with ``labels`` (N, M) int32 (0 square, 1 disc), padded with -1 to M
shapes per image (keras-hub's detection format).
"""

import numpy as np

SEGMENTATION_CLASSES = ("background", "square", "disc")
DETECTION_CLASSES = ("square", "disc")


def _place(rng, size, side, taken):
    """A free top-left corner for a ``side`` x ``side`` box, away from the ``taken`` boxes."""
    for _ in range(100):
        y, x = rng.integers(0, size - side + 1, size=2)
        box = (y, x, y + side, x + side)
        if all(box[2] <= t[0] or box[0] >= t[2] or box[3] <= t[1] or box[1] >= t[3]
               for t in taken):
            return box
    return None


def shapes(count, size=64, *, max_shapes=2, min_side=20, max_side=32, seed=0):
    """``count`` images of ``size`` px with 1 .. ``max_shapes`` shapes each (see the module)."""
    if not 0 < min_side <= max_side <= size:
        raise ValueError(f"need 0 < min_side <= max_side <= size, got {min_side}, {max_side}, "
                         f"{size}")
    rng = np.random.default_rng(seed)
    images = rng.normal(110.0, 25.0, size=(count, size, size, 3))
    masks = np.zeros((count, size, size, 1), np.int32)
    boxes = np.full((count, max_shapes, 4), -1.0, np.float32)
    labels = np.full((count, max_shapes), -1, np.int32)
    yy, xx = np.mgrid[:size, :size]
    for n in range(count):
        taken = []
        for k in range(int(rng.integers(1, max_shapes + 1))):
            side = int(rng.integers(min_side, max_side + 1))
            box = _place(rng, size, side, taken)
            if box is None:
                continue
            taken.append(box)
            y0, x0, y1, x1 = box
            kind = int(rng.integers(0, 2))  # 0 square, 1 disc
            if kind == 0:
                inside = (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)
            else:
                cy, cx, r = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2, side / 2
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                ys, xs = np.nonzero(inside)
                y0, x0, y1, x1 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
            images[n][inside] = rng.uniform(0, 255, size=3)
            masks[n, ..., 0][inside] = kind + 1
            boxes[n, k] = (y0, x0, y1, x1)
            labels[n, k] = kind
    return {
        "images": np.clip(images, 0, 255).astype(np.float32),
        "masks": masks,
        "boxes": boxes,
        "labels": labels,
    }
