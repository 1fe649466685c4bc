"""The known-harmless noise of our dependencies, silenced narrowly (each by its exact message and
the module that raises it, never a whole category), so that the lines left in a log are ours or
worth reading. The README's development notes list each one and why it is harmless.
"""

from __future__ import annotations

import logging
import os
import warnings

from lsa_ds.train.distributed import default_accelerator

KNOWN_HARMLESS_WARNINGS = [
    # DeepSpeed 0.19's ZeRO-3 calls the collectives torch 2.13 renamed; same operation, new name.
    (FutureWarning, r"`torch\.distributed\.all_gather_into_tensor` is deprecated", r"torch\.distributed\.c10d_logger"),
    (FutureWarning, r"`torch\.distributed\.reduce_scatter_tensor` is deprecated", r"torch\.distributed\.c10d_logger"),
    # peft 0.21 reads transformers 5.24's renamed property by its old name (adapters only).
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated", r"transformers\.modeling_utils"),
]
"""(category, message regex, module regex) of each warning filtered."""

KNOWN_HARMLESS_LOGS = [
    # Evaluating beyond the training length is the point of passkey/length evaluations.
    ("transformers.generation.stopping_criteria",
     "This is a friendly reminder - the current text generation call has exceeded the model's predefined maximum length"),
]
"""(logger name, message prefix) of each log record dropped."""


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_known_noise() -> None:
    """Install the filters in this process (each rank and each command calls it once).

    Two more sources are handled where they arise rather than filtered: DeepSpeed's "Setting
    accelerator to CPU" notice never fires because DS_ACCELERATOR is set explicitly here (to what
    it would detect), and transformers' "Token indices sequence length is longer than the specified
    maximum" is turned off per call where whole documents are tokenized (`Tokenizer.encode_raw`:
    windows are cut afterwards, nothing overlong reaches the model)."""
    for category, message, module in KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, prefix in KNOWN_HARMLESS_LOGS:
        logger = logging.getLogger(name)  # the object transformers' get_logger(name) returns
        if not any(isinstance(f, _DropPrefix) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropPrefix(prefix))
    if "DS_ACCELERATOR" not in os.environ:
        os.environ["DS_ACCELERATOR"] = default_accelerator()
