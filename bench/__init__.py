"""labq benchmarks: python bench/run_all.py [--quick]; see BENCHMARKS.md."""
