"""Tests of FlexEControl (lightning_modules/flexecontrol)."""
