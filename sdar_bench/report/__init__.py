"""Tables and plots from a results directory."""
