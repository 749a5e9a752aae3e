"""WebShop: a generated offline catalogue (or WebShop's own files), its pages, expert and score."""

from sdar_bench.envs.webshop.engine import Shop, WebshopGame
from sdar_bench.envs.webshop.env import WebshopEnv, WebshopParams

__all__ = ["Shop", "WebshopEnv", "WebshopGame", "WebshopParams"]
