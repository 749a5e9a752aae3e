"""Errors the policy loader raises for things a user fixes with one command."""

from __future__ import annotations


class ModelNotFound(ValueError):
    """Weights that are not on this machine; the message says how to get them, in one line."""


class RolloutUnavailable(RuntimeError):
    """A rollout engine this machine cannot run (``policy.rollout: vllm`` without a CUDA GPU or
    the vllm extra); the message names the option and the fix, in one line."""
