"""``ConvNeXtImageClassifier``: keras-hub's ``ImageClassifier`` with ConvNeXt's head."""

import keras
from keras_hub.models import ImageClassifier, Task

from keras_convnext.architecture import HEAD_NORM, PREDICTIONS
from keras_convnext.hub.backbone import ConvNeXtBackbone
from keras_convnext.hub.preprocessing import ConvNeXtImageClassifierPreprocessor
from keras_convnext.layers import LAYER_NORM_EPSILON, conv_initializer


@keras.saving.register_keras_serializable(package="keras_convnext")
class ConvNeXtImageClassifier(ImageClassifier):
    """A ``ConvNeXtBackbone`` -> global pooling -> LayerNorm -> dropout -> Dense classifier.

    keras-hub's ``ImageClassifier`` arguments (``backbone``, ``num_classes``,
    ``preprocessor``, ``pooling`` "avg" or "max", ``activation`` (None: logits), ``dropout``,
    ``head_dtype``), with ConvNeXt's LayerNorm between pooling and the classifier. The head's
    layers are named as ``keras_convnext.ConvNeXt``'s (``head_norm``, ``predictions``), so a
    checkpoint of the whole classifier loads into it with ``keras_convnext.load_weights``.
    """

    backbone_cls = ConvNeXtBackbone
    preprocessor_cls = ConvNeXtImageClassifierPreprocessor

    def __init__(self, backbone, num_classes, preprocessor=None, pooling="avg",
                 activation=None, dropout=0.0, head_dtype=None, **kwargs):
        head_dtype = head_dtype or backbone.dtype_policy
        data_format = getattr(backbone, "data_format", None)
        self.backbone = backbone
        self.preprocessor = preprocessor
        if pooling == "avg":
            self.pooler = keras.layers.GlobalAveragePooling2D(
                data_format, dtype=head_dtype, name="pooler")
        elif pooling == "max":
            self.pooler = keras.layers.GlobalMaxPooling2D(
                data_format, dtype=head_dtype, name="pooler")
        else:
            raise ValueError(f"pooling must be 'avg' or 'max', got {pooling!r}")
        self.head_norm = keras.layers.LayerNormalization(
            epsilon=LAYER_NORM_EPSILON, dtype=head_dtype, name=HEAD_NORM)
        self.output_dropout = keras.layers.Dropout(dropout, dtype=head_dtype,
                                                   name="output_dropout")
        self.output_dense = keras.layers.Dense(
            num_classes, activation=activation, dtype=head_dtype, name=PREDICTIONS,
            kernel_initializer=conv_initializer())

        inputs = backbone.input
        x = self.pooler(backbone(inputs))
        outputs = self.output_dense(self.output_dropout(self.head_norm(x)))
        Task.__init__(self, inputs=inputs, outputs=outputs, **kwargs)  # not ImageClassifier's head

        self.num_classes = num_classes
        self.activation = activation
        self.pooling = pooling
        self.dropout = dropout
