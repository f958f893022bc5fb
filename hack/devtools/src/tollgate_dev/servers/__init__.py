"""Real servers for `make run`, the tests and the benchmarks, each started as a process."""
