"""Offline ALFWorld-style engine: a procedural household, its game and a reactive expert."""

from sdar_bench.envs.alfworld.env import AlfworldEnv, AlfworldParams
from sdar_bench.envs.alfworld.world import AlfworldGame

__all__ = ["AlfworldEnv", "AlfworldGame", "AlfworldParams"]
