"""Backend-specific fast paths, used only through ``keras_convnext.dispatch``.

``jax_ops`` and ``torch_ops`` import their framework at import time, so ``dispatch`` imports
them lazily, on the backend that needs them.
"""
