"""``python -m keras_convnext.roadmap``: the roadmap's table (and ``--plot PATH``)."""

import sys

from keras_convnext.roadmap.report import main

sys.exit(main(sys.argv[1:]))
