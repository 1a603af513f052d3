"""keras_llmopt: the TensorFlow Model Optimization workflow for Keras 3 and LLMs.

Submodules follow tfmot's layout (``keras_llmopt.sparsity``, ``.quantization``, ...)
so tfmot code ports by changing the import.

Example:
    >>> import keras_llmopt
    >>> from keras_llmopt import reference
    >>> model = reference.build_gpt("tiny")
"""

__version__ = "0.1.0"
