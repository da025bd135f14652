"""``python -m keras_convnext.roadmap``: the roadmap's table (and ``--plot PATH``)."""

import sys

from keras_convnext.roadmap.report import main

main(sys.argv[1:])
