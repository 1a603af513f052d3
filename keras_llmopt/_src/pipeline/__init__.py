"""Implementation of ``keras_llmopt.pipeline``."""
