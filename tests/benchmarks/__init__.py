"""Tests of the MMWorld/VLM4D benchmarks: questions, answers, the CLIP scorer, the validation callback."""
