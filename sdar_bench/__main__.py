"""``python -m sdar_bench``: the same command line as ``sdar-bench``."""

from sdar_bench.cli import app

if __name__ == "__main__":
    app(prog_name="sdar-bench")
