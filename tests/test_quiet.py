"""The known-harmless noise filters are narrow: the exact messages go, everything else stays."""

from __future__ import annotations

import logging
import warnings

from lsa_ds.quiet import KNOWN_HARMLESS_LOGS, quiet_known_noise


def test_known_noise_is_dropped_and_nothing_else(caplog):
    quiet_known_noise()
    quiet_known_noise()  # idempotent: one filter per logger
    name, prefix = KNOWN_HARMLESS_LOGS[0]
    logger = logging.getLogger(name)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING):
        logger.warning(prefix + " (128). Depending on the model, ...")
        logger.warning("something else that matters")
    assert [r.getMessage() for r in caplog.records] == ["something else that matters"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        quiet_known_noise()
        warnings.warn_explicit("`torch.distributed.all_gather_into_tensor` is deprecated", FutureWarning,
                               "c10d_logger.py", 83, module="torch.distributed.c10d_logger")
        warnings.warn_explicit("`torch.distributed.all_gather_into_tensor` is deprecated", FutureWarning,
                               "mine.py", 1, module="mine")  # same text from another module: kept
        warnings.warn_explicit("another deprecation", FutureWarning, "c10d_logger.py", 84,
                               module="torch.distributed.c10d_logger")
    assert [str(w.message) for w in seen] == ["`torch.distributed.all_gather_into_tensor` is deprecated",
                                              "another deprecation"]
