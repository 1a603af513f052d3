"""Implementation of ``keras_llmopt.benchmark``."""
