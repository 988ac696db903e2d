"""Tests of bench/: the bench result writer."""
