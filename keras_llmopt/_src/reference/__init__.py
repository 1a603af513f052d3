"""Implementation of ``keras_llmopt.reference``."""
