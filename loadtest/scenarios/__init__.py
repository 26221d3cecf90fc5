"""Load-test scenarios: each has ``add_arguments(parser)`` and ``run(args) -> BenchResult``."""
