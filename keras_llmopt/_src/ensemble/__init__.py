"""Implementation of ``keras_llmopt.ensemble``."""
