"""The test suite, mirroring the packages; tiny models, synthetic data, nothing downloaded."""
