"""Crop-yield forecasting on xarray season cubes: cube convention, synthetic data, models, export."""
