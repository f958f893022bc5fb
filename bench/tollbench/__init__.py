"""The benchmark harness behind `make bench`: one run, one machine, every system."""
