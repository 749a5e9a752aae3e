"""The methods: one small file per method, registered through the ``sdar_bench.methods`` entry points."""
