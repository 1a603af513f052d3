"""``python -m keras_llmopt`` runs the ``keras-llmopt`` command line."""

import sys

from keras_llmopt._src.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
