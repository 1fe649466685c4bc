"""lsa-ds: context extension with the long-short alignment regularizer on DeepSpeed ZeRO-3."""

__version__ = "0.1.0"
