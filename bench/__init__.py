"""The bench layer (the top one): benchmark scripts, run as `python bench/X.py` from the repository root, and
bench/result_file.py, the one writer and checker of their result files bench/results/NAME.json."""
