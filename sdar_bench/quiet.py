"""Silence the libraries' own progress bars and logs: ours are the ones a user reads.

Below every layer that loads a model, so the command line and the suite's worker processes
share it without the suite importing the command line.
"""

from __future__ import annotations

import os


def quiet_libraries() -> None:
    """Offline Hugging Face, no library progress bars, errors only from transformers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
