"""Tests of lightning_modules/cpl: CPL, CoOp and CoCoOp."""
